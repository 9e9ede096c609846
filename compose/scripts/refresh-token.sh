#!/usr/bin/env bash
# Daily broker login (cron, before the market opens): obtains the day's access token.
#
# ticktape has no broker connector yet (flows.ingest runs the simulator), so there is no
# login command to call. Set BROKER_LOGIN_CMD to the broker-specific command that performs
# the login (Kite: request token -> session, TOTP) and stores the token where the connector
# reads it; this script runs it with a timeout and reports failure through its exit status.
# Credentials never belong in this file or in the cron entry.
set -euo pipefail

timeout_s="${BROKER_LOGIN_TIMEOUT_S:-120}"

if [[ -z "${BROKER_LOGIN_CMD:-}" ]]; then
    echo "refresh-token: no broker login command configured (BROKER_LOGIN_CMD is empty)." >&2
    echo "refresh-token: ticktape has no broker connector yet; nothing was refreshed." >&2
    exit 78  # EX_CONFIG
fi

echo "refresh-token: running broker login ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
if ! timeout "${timeout_s}" bash -c "${BROKER_LOGIN_CMD}"; then
    echo "refresh-token: broker login FAILED; live trading will not authenticate today" >&2
    exit 1
fi
echo "refresh-token: done"
