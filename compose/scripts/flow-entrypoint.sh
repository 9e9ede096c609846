#!/usr/bin/env bash
# Container entrypoint of the flow services (ingest, live, persist):
#   flow-entrypoint.sh python -m bytewax.run flows.live
#
# flows/runtime.py serves /metrics on 127.0.0.1:$TICKTAPE_METRICS_PORT only, which Prometheus
# in another container cannot reach. Until the bind address is a setting, socat relays
# 0.0.0.0:$METRICS_RELAY_PORT to it. The flow is exec'd, so it receives the stop signal
# directly (compose runs this under `init: true`, which also reaps the relay).
set -euo pipefail

if [[ $# -eq 0 ]]; then
    echo "usage: flow-entrypoint.sh COMMAND [ARGS...]" >&2
    exit 64
fi

if [[ -n "${METRICS_RELAY_PORT:-}" ]]; then
    if [[ -z "${TICKTAPE_METRICS_PORT:-}" ]]; then
        echo "flow-entrypoint: METRICS_RELAY_PORT is set but TICKTAPE_METRICS_PORT is not" >&2
        exit 78
    fi
    if [[ "${METRICS_RELAY_PORT}" == "${TICKTAPE_METRICS_PORT}" ]]; then
        echo "flow-entrypoint: METRICS_RELAY_PORT must differ from TICKTAPE_METRICS_PORT" >&2
        exit 78
    fi
    socat "TCP-LISTEN:${METRICS_RELAY_PORT},fork,reuseaddr" "TCP:127.0.0.1:${TICKTAPE_METRICS_PORT}" &
fi

exec "$@"
