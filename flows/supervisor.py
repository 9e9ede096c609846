"""Runs the flows and the API as child processes and keeps the stack whole.

A child that dies is reported and restarted with exponential backoff; more than
``restart_limit`` restarts of one child within five minutes stops the whole stack with a
clear message (never a silent half-stack). SIGINT/SIGTERM stop the children in reverse
start order with SIGTERM (flows drain: sources end, sinks flush), SIGKILL after a timeout.
Children get PR_SET_PDEATHSIG, so even a SIGKILLed supervisor leaves no orphans.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from connectors.processes import die_with_parent
from connectors.supervision import FlowStatus, write_flow_status

log = logging.getLogger("ticktape.supervisor")


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    metrics_port: int | None = None  # passed as TICKTAPE_METRICS_PORT and shown in flows.json


@dataclass
class _Child:
    spec: ChildSpec
    proc: subprocess.Popen[bytes] | None = None
    status: FlowStatus = field(default_factory=lambda: FlowStatus(name="", state="starting"))
    deaths: deque[float] = field(default_factory=deque)
    next_start: float = 0.0


def flow_argv(module: str) -> list[str]:
    return [sys.executable, "-m", "bytewax.run", module]


class Supervisor:
    def __init__(
        self,
        home: Path,
        specs: list[ChildSpec],
        *,
        backoff_max: float = 30.0,
        restart_limit: int = 5,
        stop_timeout: float = 30.0,
    ) -> None:
        self.home = home
        self.children = [_Child(spec=s, status=FlowStatus(name=s.name, state="starting")) for s in specs]
        self.backoff_max, self.restart_limit, self.stop_timeout = backoff_max, restart_limit, stop_timeout
        self.stopping = threading.Event()
        self.failure: str | None = None

    def _publish(self) -> None:
        write_flow_status(self.home, {c.spec.name: c.status for c in self.children})

    def _start(self, c: _Child) -> None:
        logdir = self.home / "logs"
        logdir.mkdir(parents=True, exist_ok=True)
        # Children log to our stderr (one terminal) and are in their own session: Ctrl-C
        # reaches only us, and we stop them in order.
        env = (
            c.spec.env if c.spec.metrics_port is None else {**c.spec.env, "TICKTAPE_METRICS_PORT": str(c.spec.metrics_port)}
        )
        c.status.metrics_port = c.spec.metrics_port
        c.proc = subprocess.Popen(
            c.spec.argv, env=env, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent
        )
        c.status.pid, c.status.started_at = c.proc.pid, time.time()
        c.status.state, c.status.detail = "running", ""
        log.info("started %s", c.spec.name, extra={"pid": c.proc.pid})
        self._publish()

    def start(self) -> None:
        for c in self.children:
            self._start(c)

    def poll(self) -> None:
        """Check children once; restart or give up. Sets ``failure`` when the stack must stop."""
        now = time.monotonic()
        for c in self.children:
            if c.proc is None:
                if now >= c.next_start and not self.stopping.is_set():
                    self._start(c)
                continue
            rc = c.proc.poll()
            if rc is None:
                continue
            c.proc = None
            c.deaths.append(now)
            while c.deaths and now - c.deaths[0] > 300:
                c.deaths.popleft()
            c.status.restarts += 1
            if len(c.deaths) > self.restart_limit:
                c.status.state, c.status.detail = "failed", f"exited with {rc}; restart limit reached"
                self.failure = (
                    f"{c.spec.name} exited with code {rc} and died {len(c.deaths)} times within 5 "
                    f"minutes; stopping the whole stack (see the log above)"
                )
                self._publish()
                return
            delay = min(self.backoff_max, 2.0 ** (len(c.deaths) - 1))
            c.next_start = now + delay
            c.status.state, c.status.detail = "restarting", f"exited with {rc}; restart in {delay:.0f}s"
            log.error("%s exited with code %s; restarting in %.0fs", c.spec.name, rc, delay)
            self._publish()

    def run(self, on_tick: object = None) -> int:
        """Supervise until a signal or a fatal failure; returns the exit code."""

        def _stop(signum: int, _frame: object) -> None:
            log.info("%s received: stopping", signal.Signals(signum).name)
            self.stopping.set()

        previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            while not self.stopping.is_set() and self.failure is None:
                self.poll()
                if callable(on_tick):
                    on_tick()
                self.stopping.wait(0.25)
            self.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if self.failure:
            log.error(self.failure)
            return 1
        return 0

    def stop(self) -> None:
        for c in reversed(self.children):
            if c.proc is None or c.proc.poll() is not None:
                continue
            c.status.state = "stopping"
            c.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout
        for c in reversed(self.children):
            if c.proc is None:
                continue
            try:
                c.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within %.0fs; killing it", c.spec.name, self.stop_timeout)
                c.proc.kill()
                c.proc.wait()
            rc = c.proc.returncode
            # uvicorn re-raises the SIGTERM it handled gracefully, so -15 is a clean stop too.
            clean = rc in (0, -signal.SIGTERM)
            c.status.state, c.status.pid = ("stopped" if clean else "failed"), None
            c.status.detail = "stopped cleanly" if clean else f"exit code {rc} while stopping"
            if clean:
                log.info("stopped %s", c.spec.name)
            else:
                log.error("%s exited with code %s while stopping", c.spec.name, rc)
        self._publish()
