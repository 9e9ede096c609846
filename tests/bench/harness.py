"""Benchmark harness: repeat a measurement, report medians and a same-run baseline ratio.

Every benchmark writes ``bench-results/<name>.json`` (or ``$TICKTAPE_BENCH_DIR``) with
the figure, its unit, the parameters, every run, and the machine it ran on, so numbers
can be compared run to run::

    result = measure("ema_update", unit="us/update", runs=5, fn=lambda: time_one_pass(),
                     baseline=lambda: time_reference_pass(), params={"n": 100_000})
    result.write()

``fn`` and ``baseline`` return one observation each (already in ``unit``). The ratio is
median(fn) / median(baseline); the baseline runs interleaved with the subject so both see
the same machine state.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

RESULTS_DIR = Path(os.environ.get("TICKTAPE_BENCH_DIR", Path(__file__).resolve().parents[2] / "bench-results"))


def machine() -> dict[str, Any]:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": psutil.cpu_count(logical=True),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "gc_thresholds": list(gc.get_threshold()),
        "platform": platform.platform(),
        "commit": commit,
    }


def cpu_clock() -> tuple[int, int]:
    """(stolen, total) CPU time of the whole machine so far, in clock ticks (zeros where
    /proc/stat is missing). On a virtual machine the hypervisor's other guests take CPU time
    from ours ("steal"); a latency tail measured while that happened says more about the
    neighbours than about the code, so benchmarks record it next to each run."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields)


def stolen_since(start: tuple[int, int]) -> float:
    """The share of the machine's CPU time stolen since ``start`` (a :func:`cpu_clock` reading)."""
    steal, total = cpu_clock()
    return round((steal - start[0]) / (total - start[1]), 4) if total > start[1] else 0.0


@dataclass
class BenchResult:
    name: str
    figure: float  # median of the runs
    unit: str
    runs: list[float]
    params: dict[str, Any]
    baseline: dict[str, Any] | None = None  # {"name", "figure", "runs", "ratio"}
    target: dict[str, Any] | None = None  # {"value", "better": "higher"|"lower", "met"}
    extra: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=machine)
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def write(self) -> Path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        path = RESULTS_DIR / f"{self.name}.json"
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        base = ""
        if self.baseline:
            base = f"  (baseline {self.baseline['name']}: {self.baseline['figure']:.4g}, ratio {self.baseline['ratio']:.3g})"
        met = ""
        if self.target:
            verdict = "met" if self.target["met"] else "NOT met"
            met = f"  target {self.target['better']} than {self.target['value']}: {verdict}"
        print(f"\n[bench] {self.name}: {self.figure:.4g} {self.unit} median of {len(self.runs)}{base}{met} -> {path}")
        return path


def measure(
    name: str,
    *,
    unit: str,
    fn: Callable[[], float],
    runs: int = 5,
    params: dict[str, Any] | None = None,
    baseline: Callable[[], float] | None = None,
    baseline_name: str = "baseline",
    target: float | None = None,
    higher_is_better: bool = True,
    warmup: int = 1,
    extra: dict[str, Any] | None = None,
) -> BenchResult:
    """Run ``fn`` (and ``baseline``, interleaved) ``runs`` times after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
        if baseline is not None:
            baseline()
    subject: list[float] = []
    base: list[float] = []
    steal: list[float] = []
    for _ in range(runs):
        clock = cpu_clock()
        subject.append(fn())
        steal.append(stolen_since(clock))
        if baseline is not None:
            base.append(baseline())
    figure = statistics.median(subject)
    extra = {**(extra or {}), "steal_share": steal}
    result = BenchResult(name=name, figure=figure, unit=unit, runs=subject, params=params or {}, extra=extra)
    if baseline is not None:
        bfig = statistics.median(base)
        result.baseline = {"name": baseline_name, "figure": bfig, "runs": base, "ratio": figure / bfig if bfig else None}
    if target is not None:
        met = figure >= target if higher_is_better else figure <= target
        result.target = {"value": target, "better": "higher" if higher_is_better else "lower", "met": met}
    return result


def timed(fn: Callable[[], int]) -> float:
    """Run ``fn`` (which returns an item count) and return items per second."""
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)
