#!/usr/bin/env bash
# `make e2e-compose`: build the service image, bring the stack up with docker compose,
# run tests/e2e against it through the api socket, and tear everything down.
# Uses the running Docker engine, or starts a private dockerd (its own containerd,
# no bridge, no iptables, state in a temp dir) and stops it by PID at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)

missing=()
for p in docker.io docker-compose debootstrap; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; then
    echo "e2e-compose: skipped: Docker cannot be installed on this machine"
    exit 0
  fi
fi

work=$(mktemp -d /tmp/berth-compose.XXXXXX)
project="berth-e2e-$$"
dockerd_pid=""
export BERTH_RUN_DIR="$work/run" BERTH_CGROUP_PARENT="$project"
export BERTH_IMAGE="$project-services:local" BERTH_TESTS_IMAGE="$project-tests:local"
mkdir -p "$BERTH_RUN_DIR"
export BERTH_E2E_TMP="$work/tmp"
mkdir -p "$BERTH_E2E_TMP"
compose=(docker-compose -f compose.yaml -f tests/compose/e2e.yaml -p "$project")
# No CAP_SYS_RESOURCE in our bounding set (bit 24): privileged containers cannot start.
capbnd=$(awk '/^CapBnd/ {print $2}' /proc/self/status)
if (( (16#$capbnd >> 24 & 1) == 0 )); then
  compose+=(-f tests/compose/unprivileged.yaml)
  export BERTH_E2E_LOOPBACK_NAT=0   # a runtime that is not privileged cannot write /proc/sys
  echo "no CAP_SYS_RESOURCE here: services run near-privileged; loopback-to-published-port tests skip"
fi

cleanup() {
  set +e
  if [ -n "${DOCKER_HOST:-}" ] || docker info >/dev/null 2>&1; then
    "${compose[@]}" --profile e2e down -v --rmi all --remove-orphans >/dev/null 2>&1
    [ -z "$dockerd_pid" ] && docker rmi "$base" >/dev/null 2>&1
  fi
  if [ -n "$dockerd_pid" ]; then
    kill "$dockerd_pid" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$dockerd_pid" 2>/dev/null
  fi
  if [ -n "${remove_docker_cgroups:-}" ]; then
    for d in /sys/fs/cgroup/*/docker /sys/fs/cgroup/docker; do
      [ -d "$d" ] && { find "$d" -mindepth 1 -type d | sort -r | xargs -r rmdir; rmdir "$d"; } 2>/dev/null
    done
  fi
  # Whatever the engine left mounted under our temp dir, then the dir itself.
  grep -F " $work/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
  for d in /sys/fs/cgroup/*/"$project" /sys/fs/cgroup/"$project"; do
    [ -d "$d" ] && { find "$d" -mindepth 1 -type d | sort -r | xargs -r rmdir; rmdir "$d"; } 2>/dev/null
  done
  rm -rf "$work"
  echo "e2e-compose: $(( $(date +%s) - start ))s"
}
trap cleanup EXIT

if ! docker info >/dev/null 2>&1; then
  echo "starting a private dockerd in $work"
  # dockerd leaves its parent cgroups behind; remove them at the end unless they were here.
  [ -d /sys/fs/cgroup/memory/docker ] || [ -d /sys/fs/cgroup/docker ] || remove_docker_cgroups=1
  dockerd --bridge=none --iptables=false --ip6tables=false --data-root "$work/docker" \
    --exec-root "$work/exec" --pidfile "$work/docker.pid" -H "unix://$work/docker.sock" \
    >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  export DOCKER_HOST="unix://$work/docker.sock"
  for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
  docker info >/dev/null 2>&1 || { echo "dockerd did not start:"; tail -20 "$work/dockerd.log"; exit 1; }
fi

base="${BASE_IMAGE:-}"
if [ -z "$base" ]; then
  base="$project-base:bookworm"
  bash tests/compose/base-image.sh "$base"
fi
export BASE_IMAGE="$base"

"${compose[@]}" --profile e2e build --quiet
"${compose[@]}" up -d
for _ in $(seq 120); do
  state=$(docker inspect -f '{{.State.Health.Status}}' "$("${compose[@]}" ps -q api)" 2>/dev/null || true)
  [ "$state" = healthy ] && break
  sleep 1
done
[ "$state" = healthy ] || { "${compose[@]}" logs --tail 30; exit 1; }
"${compose[@]}" --profile e2e run --rm tests
