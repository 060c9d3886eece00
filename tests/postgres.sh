#!/usr/bin/env bash
# Install and start a local PostgreSQL for `BERTH_TEST_POSTGRES=1 make test`.
# root gets a superuser role so the test harness can create one database per
# service instance over the unix socket (peer auth), and drop it afterwards.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
ver=$(ls /etc/postgresql | sort -V | tail -n1)
pg_ctlcluster "$ver" main status >/dev/null 2>&1 || pg_ctlcluster "$ver" main start
su postgres -c "psql -tAc \"SELECT 1 FROM pg_roles WHERE rolname='root'\"" | grep -q 1 \
  || su postgres -c "createuser --superuser root"
echo "PostgreSQL $ver running on /var/run/postgresql"
