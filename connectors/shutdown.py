"""Cooperative shutdown for flow processes.

SIGTERM/SIGINT set :data:`STOP`; our sources then end their partitions (``StopIteration``),
so Bytewax finishes the dataflow normally: every sink flushes and closes, nothing is left
half-written, and the process exits 0.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

STOP = threading.Event()
log = logging.getLogger("ticktape.shutdown")


def _handler(signum: int, _frame: FrameType | None) -> None:
    if not STOP.is_set():
        log.info("shutdown requested (%s): draining", signal.Signals(signum).name)
    STOP.set()


def install_handlers() -> None:
    """Call once in the main thread of a flow process."""
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)
