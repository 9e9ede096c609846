#!/usr/bin/env bash
# Daily instrument master refresh (cron, before the market opens).
#
# It calls `ticktape instruments refresh` when the CLI has an `instruments` command. The CLI
# has none yet (see `ticktape --help`; only `ticktape up` and the compose init service load
# the simulator's instrument master), so today this script says so and fails rather than
# pretend a refresh happened.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cli="${CLI_WRAPPER:-${here}/ticktape-cli.sh}"

if ! help_text="$("${cli}" --help 2>&1)"; then
    echo "refresh-instruments: cannot run the ticktape CLI through ${cli}:" >&2
    echo "${help_text}" >&2
    exit 1
fi
if ! grep -Eq '^[^a-z]*instruments[[:space:]]' <<<"${help_text}"; then
    echo "refresh-instruments: the ticktape CLI has no 'instruments' command; nothing was refreshed." >&2
    echo "refresh-instruments: the simulator's instruments are loaded by the compose init service" >&2
    echo "refresh-instruments: (docker compose up init); a broker instrument refresh does not exist yet." >&2
    exit 69  # EX_UNAVAILABLE
fi

echo "refresh-instruments: refreshing ($(date -u +%Y-%m-%dT%H:%M:%SZ))"
"${cli}" instruments refresh
echo "refresh-instruments: done"
