"""Factories and helpers shared by the tests."""

from __future__ import annotations

from typing import Any

from flows.ingest import SimConfig, _SimPartition
from schemas.market import Instrument, InstrumentType


def instrument(
    key: str,
    kind: InstrumentType = InstrumentType.EQ,
    *,
    lot: int = 1,
    tick: float = 0.05,
    freeze: int | None = None,
) -> Instrument:
    """A minimal instrument-master row for ``EXCHANGE:SYMBOL``."""
    exchange, symbol = key.split(":")
    return Instrument(
        instrument=key,
        instrument_token=1,
        exchange_token=1,
        tradingsymbol=symbol,
        name=symbol,
        exchange=exchange,
        segment=exchange,
        instrument_type=kind,
        tick_size=tick,
        lot_size=lot,
        freeze_qty=freeze,
    )


def events(batch: list[tuple[str, list[Any]]]) -> list[tuple[str, Any]]:
    """A simulator partition's batch of ``(group, chunk)`` items as ``(group, event)``."""
    return [(key, ev) for key, chunk in batch for ev in chunk]


def drain(part: _SimPartition) -> list[tuple[str, Any]]:
    """Every event a simulator partition emits until its bounded run ends, as ``(group, event)``."""
    out: list[tuple[str, Any]] = []
    while True:
        try:
            out += events(part.next_batch())
        except StopIteration:
            return out


def simulated(cfg: SimConfig) -> list[Any]:
    """Every event of every group of ``cfg``, group by group: a Tick, a DepthSnapshot or a bad
    tick as ``(defect, raw payload)``."""
    return [ev for g in range(cfg.groups) for _key, ev in drain(_SimPartition(cfg, g, None))]


def sim_ticks(instruments: int, seconds: int, seed: int = 3, day: Any = None) -> tuple[list[Instrument], list[Any]]:
    """A bounded simulator session: the universe and its valid ticks, time-ordered."""
    from datetime import date

    from connectors.brokers.universe import build_universe
    from schemas.market import Tick

    day = day or date(2026, 11, 23)
    universe = tuple(build_universe(day, instruments))
    cfg = SimConfig(universe=universe, seed=seed, groups=2, day=day, speed=0, max_steps=seconds)
    ticks = [ev for ev in simulated(cfg) if type(ev) is Tick]
    ticks.sort(key=lambda t: (t.ts_event, t.instrument, t.seq))
    return list(universe), ticks


def write_ticks_csv(path: Any, ticks: list[Any]) -> None:
    """Ticks in the backtest CSV layout (epoch-ns timestamps)."""
    with open(path, "w") as fh:
        fh.write("timestamp,instrument,price,quantity,volume,oi,bid,ask\n")
        for t in ticks:
            fh.write(f"{t.ts_event},{t.instrument},{t.ltp},{t.last_qty},{t.volume},{t.oi},{t.bid},{t.ask}\n")


def random_walk_candles(symbols: list[str], day: Any, bars: int, timeframe: str = "1m", seed: int = 1) -> list[Any]:
    """``bars`` closed candles per symbol of a seeded random walk from 09:15 IST on ``day``,
    continuing over the next trading days when a session fills up; time-ordered."""
    import numpy as np

    from connectors.brokers.simulator import next_trading_day, session_open_ns
    from operators.candles import SESSION_NS, parse_timeframe
    from schemas.market import Candle

    tf = parse_timeframe(timeframe)
    per_day = SESSION_NS // tf.ns
    opens, d = [], day
    while len(opens) < bars:
        s_open = session_open_ns(d)
        opens += [s_open + k * tf.ns for k in range(min(per_day, bars - len(opens)))]
        d = next_trading_day(d)
    rng = np.random.default_rng(seed)
    steps = rng.normal(0, 0.002, size=(len(symbols), bars, 4))
    paths = np.exp(np.cumsum(steps, axis=2))
    out = []
    for k, sym in enumerate(symbols):
        px = 100.0 + (50 * k) % 900
        for b, t0 in enumerate(opens):
            o = px
            path = o * paths[k, b]
            c = round(float(path[-1]), 2)
            h = round(max(o, c, float(path.max())), 2)
            lo = round(min(o, c, float(path.min())), 2)
            out.append(
                Candle(instrument=sym, timeframe=timeframe, open_time=t0, ts_event=t0 + tf.ns, ts_init=t0,
                       open=round(o, 2), high=h, low=lo, close=c, volume=1000 + b, trade_count=1, vwap=c, oi=0,
                       final=True)
            )  # fmt: skip
            px = c
    out.sort(key=lambda c: (c.ts_event, c.instrument))
    return out


def write_candles_csv(path: Any, candles: list[Any]) -> None:
    from datetime import UTC, datetime, timedelta, timezone

    ist = timezone(timedelta(hours=5, minutes=30))
    with open(path, "w") as fh:
        fh.write("timestamp,instrument,open,high,low,close,volume\n")
        for c in candles:
            ts = datetime.fromtimestamp(c.open_time / 1e9, tz=UTC).astimezone(ist).isoformat()
            fh.write(f"{ts},{c.instrument},{c.open},{c.high},{c.low},{c.close},{c.volume}\n")


_FILL_SEQ = iter(range(10**9))


def fill(
    side: Any, qty: int, price: float, *, ts: int = 1, strategy: str = "s1", instrument: str = "NSE:INFY",
    charges: float = 0.0, trade_id: str | None = None, client_order_id: str = "c",
) -> Any:  # fmt: skip
    """A simulated-venue fill (fresh trade id unless given)."""
    from schemas.orders import Fill

    return Fill(venue="sim", trade_id=trade_id or f"t{next(_FILL_SEQ)}", client_order_id=client_order_id,
                venue_order_id="v", account="acc", strategy=strategy, instrument=instrument, side=side, qty=qty,
                price=price, ts_event=ts, ts_init=ts, charges=charges)  # fmt: skip
