"""The parts of ``ticktape up``'s preparation that have no CLI command yet, for compose and systemd.

    python compose/bootstrap.py --sim-instruments --live-recovery

``--sim-instruments`` upserts the simulator's instrument master for today into ``instruments``
(``flows.live`` loads its universe from that table and ``flows.ingest`` only runs the
simulator so far). It only adds: a (re)start never deactivates rows a broker master loaded.
Replacing the master (and retiring expired contracts) is the daily cron job's
``ticktape instruments refresh``.

``--live-recovery`` creates (or, after the broker's cluster id changed, recreates) the Bytewax
recovery store of ``flows.live`` under ``$TICKTAPE_HOME/recovery/live`` and prints the
``BYTEWAX_*`` variables the live process must run with.

Settings come from the ``TICKTAPE_*`` environment, as for every ticktape process.
"""

from __future__ import annotations

import argparse
import sys

from connectors.kafka import KafkaClientConfig, cluster_id
from connectors.logs import setup_logging
from connectors.postgres import connect
from connectors.postgres.instruments import upsert_instruments
from connectors.settings import ConfigError, load_settings
from flows.ingest import sim_config_from_settings
from flows.runtime import endpoints, recovery_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sim-instruments", action="store_true", help="upsert the simulator's instrument master")
    parser.add_argument("--live-recovery", action="store_true", help="prepare flows.live's Bytewax recovery store")
    args = parser.parse_args(argv)
    if not (args.sim_instruments or args.live_recovery):
        parser.error("nothing to do: pass --sim-instruments and/or --live-recovery")
    try:
        settings = load_settings()
        ep = endpoints(settings)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    setup_logging("bootstrap", settings.log_format, settings.log_level)
    if args.sim_instruments:
        universe = sim_config_from_settings(settings).universe
        with connect(ep.database_url, autocommit=True) as conn:
            n = upsert_instruments(conn, universe)
        print(f"instruments: upserted {n} simulator instrument(s)")
    if args.live_recovery:
        cluster = cluster_id(KafkaClientConfig.from_settings(settings, ep.bootstrap).admin())
        env = recovery_env(settings.home_dir, "live", cluster, settings.snapshot_interval_s)
        for key, value in env.items():
            print(f"{key}={value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
