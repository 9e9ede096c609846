"""The supervisor keeps the stack whole: restart with backoff, give up loudly, stop cleanly."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from connectors.processes import pid_alive
from connectors.supervision import read_flow_status
from flows.supervisor import ChildSpec, Supervisor


def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


SLEEPER = child("import time\nwhile True: time.sleep(0.1)")
CRASHER = child("import sys, time; time.sleep(0.2); sys.exit(3)")
STUBBORN = child("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True: time.sleep(0.1)")


def test_a_dying_child_is_restarted_with_backoff_then_the_stack_stops(tmp_path: Path) -> None:
    sup = Supervisor(
        tmp_path,
        [ChildSpec("steady", SLEEPER, {}), ChildSpec("flaky", CRASHER, {})],
        backoff_max=0.5,
        restart_limit=2,
        stop_timeout=5,
    )
    sup.start()
    steady_pid = sup.children[0].proc.pid
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:  # the supervisor owns the main thread (it installs signal handlers)
        while not done.is_set():
            st = read_flow_status(tmp_path).get("flaky")
            if st is not None and st.state == "restarting":
                seen.append(st.detail)
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.monotonic()
    result = [sup.run()]
    elapsed = time.monotonic() - t0
    done.set()
    watcher.join()
    seen_restarting = any("exited with 3" in d for d in seen)
    assert result == [1]  # gave up: a failed child stops everything, never a half-stack
    assert seen_restarting
    assert sup.failure and "flaky exited with code 3" in sup.failure and "3 times" in sup.failure
    status = read_flow_status(tmp_path)
    assert status["flaky"].state == "failed" and status["flaky"].restarts == 3
    assert status["steady"].state == "stopped"
    assert not pid_alive(steady_pid)
    # backoff: 1 s is capped to 0.5 s, so three deaths take at least 0.2 + 0.5 + 0.2 + 0.5 + 0.2 s
    assert elapsed >= 1.5


def test_stop_terminates_then_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    sup = Supervisor(tmp_path, [ChildSpec("polite", SLEEPER, {}), ChildSpec("stubborn", STUBBORN, {})], stop_timeout=1.0)
    sup.start()
    time.sleep(0.3)  # let the stubborn child install its handler
    pids = [c.proc.pid for c in sup.children]
    t0 = time.monotonic()
    sup.stop()
    assert 0.9 <= time.monotonic() - t0 < 5
    assert [pid_alive(p) for p in pids] == [False, False]
    status = read_flow_status(tmp_path)
    assert status["polite"].state == "stopped"  # SIGTERM ended it: a clean stop
    assert status["stubborn"].state == "failed" and "-9" in status["stubborn"].detail
