#!/usr/bin/env bash
# Nightly PostgreSQL/TimescaleDB backup with rotation (cron).
#
# pg_dump runs inside the timescaledb container (the client matches the server, and the
# local socket needs no password), the dump streams to BACKUP_DIR on the host in custom
# format (compressed, restorable table by table with pg_restore), is checked with
# `pg_restore --list`, then renamed into place. Dumps older than BACKUP_KEEP_DAYS are deleted.
#
# Restore into a fresh TimescaleDB (see the TimescaleDB docs on pg_dump/pg_restore):
#   SELECT timescaledb_pre_restore();  pg_restore -d ticktape FILE;  SELECT timescaledb_post_restore();
set -euo pipefail

backup_dir="${BACKUP_DIR:-/var/backups/ticktape}"
keep_days="${BACKUP_KEEP_DAYS:-7}"
service="${BACKUP_DB_SERVICE:-timescaledb}"

if [[ -z "${COMPOSE_FILE:-}" ]]; then
    COMPOSE_FILE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/docker-compose.yml"
    export COMPOSE_FILE
fi
if ! [[ "${keep_days}" =~ ^[0-9]+$ ]] || (( keep_days < 1 )); then
    echo "backup-db: BACKUP_KEEP_DAYS must be a positive integer, got '${keep_days}'" >&2
    exit 64
fi

mkdir -p "${backup_dir}"
umask 077
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
final="${backup_dir}/ticktape-${stamp}.dump"
partial="${final}.partial"
trap 'rm -f "${partial}"' EXIT

# POSTGRES_USER / POSTGRES_DB are read inside the container, from its own environment.
docker compose exec -T "${service}" sh -c 'exec pg_dump --format=custom --compress=6 -U "$POSTGRES_USER" -d "$POSTGRES_DB"' \
    > "${partial}"
docker compose exec -T "${service}" pg_restore --list < "${partial}" > /dev/null
mv "${partial}" "${final}"
trap - EXIT
echo "backup-db: wrote ${final} ($(du -h "${final}" | cut -f1))"

find "${backup_dir}" -maxdepth 1 -name 'ticktape-*.dump' -type f -mtime +"$((keep_days - 1))" -print -delete \
    | sed 's/^/backup-db: deleted old dump /'
