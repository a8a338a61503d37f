#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the store suite; print its admin URL.
# Usage: eval "$(bash .ci/postgres.sh start DIR)"; ...; bash .ci/postgres.sh stop DIR
set -euo pipefail
action="$1"; dir="$2"; port="${LOSSEARCH_CI_PG_PORT:-55432}"
bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case "$action" in
  start)
    if [ -z "$bin" ]; then
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2
      bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    fi
    mkdir -p "$dir"
    chmod 755 "$(dirname "$dir")"  # the postgres user must reach it
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_postgres "$bin/initdb" -D "$dir/data" -A trust -U postgres >/dev/null
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w \
      -o "-h 127.0.0.1 -p $port -k $dir/data" start >/dev/null
    echo "export LOSSEARCH_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
    ;;
  stop)
    as_postgres "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    ;;
esac
