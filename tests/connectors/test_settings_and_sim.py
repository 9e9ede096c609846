from __future__ import annotations

import dataclasses
import time
from datetime import date
from typing import Any

import pytest

from connectors.brokers.simulator import MarketSimulator
from connectors.brokers.universe import build_universe, to_kite_csv
from connectors.settings import ConfigError, load_settings
from flows.ingest import SimConfig, _SimPartition
from schemas.codec import encode
from tests.stubs import drain, events, simulated

DAY = date(2026, 11, 23)


def test_bad_setting_names_variable_and_form() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"TICKTAPE_KAFKA_BOOTSTRAP": "localhost", "TICKTAPE_SIM_SPEED": "fast"})
    text = str(info.value)
    assert "TICKTAPE_KAFKA_BOOTSTRAP='localhost': expected host:port" in text
    assert "TICKTAPE_SIM_SPEED='fast'" in text


def _run(seed: int, steps: int = 30, groups: int = 3) -> bytes:
    u = tuple(build_universe(DAY, 120))
    cfg = SimConfig(universe=u, seed=seed, groups=groups, day=DAY, speed=0, bad_tick_rate=0.01, max_steps=steps)
    return b"\n".join(encode(ev) for ev in simulated(cfg))


def test_same_seed_gives_byte_identical_ticks() -> None:
    a, b = _run(7), _run(7)
    assert len(a) > 100_000
    assert a == b
    assert _run(8) != a


def test_resume_from_snapshot_continues_identically() -> None:
    u = tuple(build_universe(DAY, 60))
    cfg = SimConfig(universe=u, seed=1, groups=1, day=DAY, speed=0, max_steps=20)
    whole = [ev for _k, ev in drain(_SimPartition(cfg, 0, None))]
    part = _SimPartition(cfg, 0, None)
    first = [ev for _k, ev in events(part.next_batch() + part.next_batch())]
    resumed = _SimPartition(cfg, 0, part.snapshot())
    rest = [ev for _k, ev in drain(resumed)]
    assert first + rest == whole


def test_paced_source_releases_events_when_due_and_in_the_same_order() -> None:
    u = tuple(build_universe(DAY, 60))
    unpaced = SimConfig(universe=u, seed=1, groups=1, day=DAY, speed=0, bad_tick_rate=0.01, max_steps=5)
    paced = dataclasses.replace(unpaced, speed=50.0)  # 5 market seconds in ~0.1 s
    part = _SimPartition(paced, 0, None)
    batches: list[list[Any]] = []
    while True:
        try:
            batch = events(part.next_batch())
        except StopIteration:
            break
        if batch:
            batches.append([ev for _k, ev in batch])
            # nothing is released before it is due
            wall = (time.monotonic() - part._wall0) * paced.speed * 1e9
            assert all(due <= wall for due in part._due[: part._pos])
    assert len(batches) > 1  # spread over the run, not released at once
    expected = [encode(ev) for _k, ev in drain(_SimPartition(unpaced, 0, None))]  # bytes: a bad tick's NaN != NaN
    assert [encode(ev) for b in batches for ev in b] == expected


def test_market_is_plausible() -> None:
    u = build_universe(DAY, 500)
    sim = MarketSimulator(u, all_instruments=u, seed=3, group=0, day=DAY)
    ticks = []
    for _ in range(120):
        t, _d, _b = sim.step()
        ticks += t
    assert 1_000 * 120 * 0.5 < len(ticks) < 5_000 * 120  # about 1-3k ticks/s at the open
    by = {}
    for t in ticks:
        assert t.ltp > 0 and t.bid <= t.ask and t.volume >= by.get(t.instrument, (0, 0))[0]
        by[t.instrument] = (t.volume, t.oi)
    nifty = [t.ltp for t in ticks if t.instrument == "NSE:NIFTY 50"]
    fut = [t.ltp for t in ticks if t.instrument.endswith("NIFTY26NOVFUT") and "BANK" not in t.instrument]
    assert abs(fut[-1] / nifty[-1] - 1) < 0.01  # futures track the index with a small carry
    assert any(v[1] > 0 for k, v in by.items() if k.startswith("NFO:"))  # derivatives carry OI


def test_instrument_master_has_kite_columns() -> None:
    csv_text = to_kite_csv(build_universe(DAY, 50))
    header = csv_text.splitlines()[0]
    assert header == (
        "instrument_token,exchange_token,tradingsymbol,name,last_price,expiry,strike,tick_size,"
        "lot_size,instrument_type,segment,exchange"
    )
    assert len(csv_text.splitlines()) == 51
