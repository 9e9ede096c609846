#!/usr/bin/env bash
# Run one `ticktape` CLI command in the compose image, against the compose services:
#   ticktape-cli.sh db retention
#   ticktape-cli.sh topics list
# Uses the `init` service definition (image, environment, network) without its dependencies.
# COMPOSE_FILE (a standard docker compose variable) selects the bundle; cron sets it.
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: ticktape-cli.sh COMMAND [ARGS...]   (see: ticktape-cli.sh --help)" >&2
    exit 64
fi

if [[ -z "${COMPOSE_FILE:-}" ]]; then
    COMPOSE_FILE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/docker-compose.yml"
    export COMPOSE_FILE
fi

exec docker compose run --rm --no-deps -T init ticktape "$@"
