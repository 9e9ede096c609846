"""The session fixtures themselves: a test that fails after the session's broker died says so."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_INNER = """
import os, signal, time

from connectors.processes import pid_alive


def test_broker_dies(broker):
    os.kill(broker.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pid_alive(broker.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert False, "the broker went away"
"""


def test_a_failure_after_the_broker_died_carries_the_end_of_its_log(tmp_path: Path) -> None:
    inner = tmp_path / "test_inner.py"
    inner.write_text(_INNER)
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider", "-o", "addopts=",
         "--rootdir", str(tmp_path), str(inner)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-3000:]
    assert "embedded broker" in out and "is not running; end of" in out, out[-3000:]
    assert "tansu broker" in out, out[-3000:]  # the log's first line: the broker's banner
