"""The modules ``make native`` compiles, checked against their own sources.

The rest of the suite runs whatever build Python imports (compiled where a C compiler was
found). These tests run the sources themselves in a child interpreter (:mod:`tests.pure`):
their doctests, and the promise of :mod:`operators.state` that a snapshot taken by one build
(a Bytewax recovery snapshot, say) loads in the other and carries on identically.
"""

from __future__ import annotations

import json
import os
import pickle
import random
from pathlib import Path
from typing import Any

import pytest

import operators.candles
from operators import check_compiled
from operators.candles import CandleBook
from operators.indicators import IndicatorSet
from schemas.market import Candle, Tick
from tests.pure import compiled, run_pure

MODULES = (
    "operators.state",
    "operators.candles",
    "operators.indicators",
    "operators.indicators.indicator",
    "operators.indicators.averages",
    "operators.indicators.oscillators",
    "operators.indicators.trend",
    "operators.indicators.volatility",
    "operators.indicators.volume",
    "operators.indicators.windows",
    "operators.indicators.indicator_set",
)  # fmt: skip (the Makefile's NATIVE_SRC)
SPECS = ("sma:5", "ema:5", "wma:5", "dema:5", "tema:5", "rsi", "macd", "roc", "cci", "willr", "stoch", "stochrsi",
         "adx", "supertrend", "sar", "atr", "bbands", "donchian", "keltner", "obv", "mfi", "vwap")  # fmt: skip
OPEN = 1_763_610_300 * 10**9  # 2025-11-20 09:15 IST


def test_the_native_modules_are_the_makefiles() -> None:
    root = Path(__file__).resolve().parents[2]
    line = next(x for x in (root / "Makefile").read_text().splitlines() if x.startswith("NATIVE_SRC"))
    paths: set[Path] = set()
    for word in line.replace("$(sort $(wildcard ", " ").replace("))", " ").split(":=", 1)[1].split():
        paths.update(root.glob(word))
    names = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__") for p in paths}
    assert names == set(MODULES)


def test_the_sources_doctests_pass() -> None:
    out = run_pure(
        """
        import doctest, importlib, json, sys
        res = {}
        for name in sys.argv[1:]:
            m = importlib.import_module(name)
            assert m.__file__.endswith(".py"), m.__file__
            r = doctest.testmod(m, optionflags=doctest.ELLIPSIS)
            res[name] = [r.attempted, r.failed]
        print(json.dumps(res))
        """,
        *MODULES,
    )
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(results) == set(MODULES)
    for name, (attempted, failed) in results.items():
        assert attempted > 0 and failed == 0, (name, attempted, failed, out.stdout)


# ----------------------------------------------------------------------------- snapshots


def _bars(n: int) -> list[tuple[float, float, float, float, float, int]]:
    rng = random.Random(5)
    px, bars = 100.0, []
    for k in range(n):
        o = px
        px *= 1.0 + rng.gauss(0.0, 0.01)
        h, lo = max(o, px) * (1 + abs(rng.gauss(0, 0.003))), min(o, px) * (1 - abs(rng.gauss(0, 0.003)))
        bars.append((o, h, lo, px, float(rng.randint(100, 10_000)), k // 40))
    return bars


def _ticks(n: int) -> list[Tick]:
    rng = random.Random(9)
    px, vol, out = 250.0, 0, []
    for k in range(n):
        px = round(px * (1.0 + rng.gauss(0.0, 0.001)), 2)
        vol += rng.randint(1, 50)
        ts = OPEN + k * 700_000_000 + rng.randint(0, 5) * 1000
        out.append(Tick(instrument="NSE:INFY", ts_event=ts, ts_init=ts, seq=k, ltp=px, last_qty=1, volume=vol,
                        oi=0, bid=px, ask=px, bid_qty=1, ask_qty=1))  # fmt: skip
    return out


BARS, TICKS = _bars(300), _ticks(3000)
HALF_BARS, HALF_TICKS = 150, 1500


def _fresh() -> tuple[IndicatorSet, CandleBook]:
    return IndicatorSet(SPECS), CandleBook("NSE:INFY", ("1s", "5s", "1m", "5m", "15m", "1h", "1d"))


def _feed(state: tuple[IndicatorSet, CandleBook], bars: list[Any], ticks: list[Tick]) -> list[Any]:
    """Feed bars and ticks; the indicators' outputs after every bar and every candle closed."""
    ind, book = state
    seen: list[Any] = []
    for bar in bars:
        ind.on_bar(*bar)
        seen.append(sorted(ind.snapshot().items()))
    out: list[Candle] = []
    for t in ticks:
        book.on_tick(t, t.ts_event, out)
    seen += [(c.timeframe, c.open_time, c.open, c.high, c.low, c.close, c.volume, c.vwap, c.trade_count) for c in out]
    return seen


_CHILD = """
import json, pickle, sys
sys.path.insert(0, sys.argv[1])
from tests.operators.test_native import BARS, HALF_BARS, HALF_TICKS, TICKS, _feed, _fresh
import operators.candles
assert operators.candles.__file__.endswith(".py")
with open(sys.argv[2], "rb") as f:
    theirs = pickle.load(f)
mine = _fresh()
_feed(mine, BARS[:HALF_BARS], TICKS[:HALF_TICKS])
with open(sys.argv[3], "wb") as f:
    pickle.dump(mine, f, protocol=5)
print(json.dumps(_feed(theirs, BARS[HALF_BARS:], TICKS[HALF_TICKS:])))
"""


def test_a_snapshot_taken_by_one_build_carries_on_identically_in_the_other(tmp_path: Path) -> None:
    """Indicators of every kind and a candle book, pickled mid-stream by this process's build
    (compiled after ``make native``) and loaded by the sources, and the other way round: both
    continue exactly as an unpickled copy in this process does."""
    state = _fresh()
    _feed(state, BARS[:HALF_BARS], TICKS[:HALF_TICKS])
    (tmp_path / "ours.pkl").write_bytes(pickle.dumps(state, protocol=5))
    root = str(Path(__file__).resolve().parents[2])
    out = run_pure(_CHILD, root, str(tmp_path / "ours.pkl"), str(tmp_path / "theirs.pkl"))
    expected = _feed(pickle.loads(pickle.dumps(state, protocol=5)), BARS[HALF_BARS:], TICKS[HALF_TICKS:])
    assert len(expected) > 200 and any(isinstance(e, tuple) and e[0] == "5m" for e in expected)
    # JSON turns tuples into lists; NaN never appears (snapshots hold ready indicators only)
    assert json.loads(out.stdout) == json.loads(json.dumps(expected))
    theirs = pickle.loads((tmp_path / "theirs.pkl").read_bytes())
    assert _feed(theirs, BARS[HALF_BARS:], TICKS[HALF_TICKS:]) == expected


def test_a_compiled_module_older_than_its_source_stops_the_import(tmp_path: Path) -> None:
    pkg = tmp_path / "operators"
    (pkg / "indicators").mkdir(parents=True)
    source, so = pkg / "indicators" / "ema.py", pkg / "indicators" / "ema.cpython-311-x86_64-linux-gnu.so"
    shared = pkg / "native__mypyc.cpython-311-x86_64-linux-gnu.so"  # no source of its own: never stale
    for f in (source, so, shared):
        f.write_bytes(b"")
    os.utime(source, (1_000, 1_000))
    os.utime(so, (2_000, 2_000))
    os.utime(shared, (0, 0))
    check_compiled(pkg)  # compiled after its source was last changed
    os.utime(source, (3_000, 3_000))
    with pytest.raises(ImportError, match=r"operators/indicators/ema.py changed after it was compiled.*make native"):
        check_compiled(pkg)


def test_this_process_runs_the_build_make_chose() -> None:
    """Informational guard: with compiled modules present they are what this process runs."""
    so = list(Path(operators.candles.__file__).parent.glob("candles.*.so"))
    assert compiled(operators.candles) == bool(so)
    if not so:
        pytest.skip("no compiled modules (make pure, or no C compiler): the sources run")
