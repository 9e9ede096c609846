#!/usr/bin/env bash
# Daily instrument master refresh (cron, before the market opens): `ticktape instruments refresh`.
#
#   INSTRUMENTS_SOURCE     kite       Kite's daily instruments dump
#                          simulator  the simulator's master for today (the default: what the
#                                     compose stack trades on; its expiries roll with the date)
#                          a path or http(s) URL of a dump in Kite's columns
#   INSTRUMENTS_EXCHANGES  space-separated exchanges to load, e.g. "NSE NFO" (default: all in the source)
#
# The refresh upserts the source's rows and deactivates what it no longer lists, in one
# transaction; a download failure (exit 1) or a malformed row (exit 2) changes nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cli="${CLI_WRAPPER:-${here}/ticktape-cli.sh}"
source="${INSTRUMENTS_SOURCE:-simulator}"

args=(instruments refresh "${source}")
for exchange in ${INSTRUMENTS_EXCHANGES:-}; do
    args+=(--exchange "${exchange}")
done

echo "refresh-instruments: refreshing from ${source} ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
status=0
"${cli}" "${args[@]}" || status=$?
if [[ ${status} -ne 0 ]]; then
    echo "refresh-instruments: FAILED (exit ${status}); the instrument master was not changed" >&2
    exit "${status}"
fi
echo "refresh-instruments: done"
