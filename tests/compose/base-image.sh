#!/usr/bin/env bash
# Make a Debian bookworm rootfs with python3 for the service image, for hosts that
# cannot pull the official Python image (like ours: only Debian's and PyPI's mirrors
# are reachable). The tarball is cached; `docker import` turns it into BASE_IMAGE.
#   usage: base-image.sh TAG
set -euo pipefail
tag=${1:-berth-base:bookworm}
cache=${BERTH_CACHE_DIR:-/var/cache/berth}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=python3,python3-venv,ca-certificates,iproute2,util-linux,procps,busybox-static,nftables
tarball=$cache/bookworm-$(echo "$packages" | sha256sum | cut -c1-12).tar  # a new list, a new cache
if [ ! -s "$tarball" ]; then
  mkdir -p "$cache"
  root=$(mktemp -d "$cache/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  echo "debootstrap bookworm into $root (cached as $tarball)"
  debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -20 "$cache/debootstrap.log"; exit 1; }
  # Trust what the host trusts (a TLS-intercepting egress proxy's CA, for pip).
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi
docker import --change 'CMD ["/bin/bash"]' "$tarball" "$tag" >/dev/null
echo "base image $tag from $tarball"
