"""The simulated NSE market: deterministic, seedable ticks and depth for paper trading.

Model, per instrument group (one Bytewax source partition each):

* The session clock runs 09:15-15:30 IST; after the close it continues with the next
  weekday's open (volume resets, an overnight gap is applied).
* Index levels follow geometric Brownian motion on a 100 ms grid with a U-shaped intraday
  volatility pattern and rare jumps. Every group simulates the underlyings itself from
  the same seed, so all groups see the same index path.
* Stocks follow their own GBM with the same pattern. Futures track their index with
  cost of carry; options are Black-Scholes prices of their index with a volatility smile,
  so the whole chain moves with the underlying.
* Ticks arrive as a Poisson process whose rate follows the intraday activity pattern.
  Each carries last qty (lots for derivatives), cumulative day volume, OI that builds with
  price moves, and a best bid/ask a few ticks wide; each instrument that ticked in a
  step also gets a five-level depth snapshot.

Everything is drawn from one ``numpy`` generator per group, seeded from ``(seed, group)``:
the same seed and group count give byte-identical ticks, whatever the pacing.
``bad_tick_rate`` adds malformed ticks (besides, never instead of, the valid ones), so
the ingest validation and the dead-letter path can be exercised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from connectors.brokers.universe import INDICES, STOCKS
from schemas.market import DepthLevel, DepthSnapshot, Instrument, InstrumentType, Tick

IST = ZoneInfo("Asia/Kolkata")
SESSION_OPEN = time(9, 15)
SESSION_CLOSE = time(15, 30)
SESSION_NS = int(timedelta(hours=6, minutes=15).total_seconds() * 1e9)
STEP_NS = 1_000_000_000  # one generation step = 1 s of market time
GRID = 10  # underlying path points per step (100 ms)
_YEAR_S = 252 * 22_500.0  # trading seconds per year
RATE = 0.065  # risk-free rate for carry and option pricing


def session_open_ns(day: date) -> int:
    return int(datetime.combine(day, SESSION_OPEN, IST).astimezone(UTC).timestamp() * 1e9)


def next_trading_day(day: date) -> date:
    day += timedelta(days=1)
    while day.weekday() >= 5:
        day += timedelta(days=1)
    return day


def _norm_cdf(x: np.ndarray) -> np.ndarray:
    # Abramowitz-Stegun 7.1.26 via erf; |error| < 1.5e-7, plenty for simulated quotes.
    z = np.abs(x) / math.sqrt(2.0)
    t = 1.0 / (1.0 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-z * z)
    return 0.5 * (1.0 + np.sign(x) * erf)


def black_scholes(
    spot: np.ndarray, strike: np.ndarray, t_years: np.ndarray, vol: np.ndarray, is_call: np.ndarray
) -> np.ndarray:
    sq = vol * np.sqrt(t_years)
    d1 = (np.log(spot / strike) + (RATE + 0.5 * vol * vol) * t_years) / sq
    d2 = d1 - sq
    disc = np.exp(-RATE * t_years)
    call = spot * _norm_cdf(d1) - strike * disc * _norm_cdf(d2)
    put = strike * disc * _norm_cdf(-d2) - spot * _norm_cdf(-d1)
    return np.where(is_call, call, put)


def activity(frac: np.ndarray | float) -> np.ndarray | float:
    """Intraday multiplier for volatility and tick rate; ``frac`` is 0 at open, 1 at close."""
    minutes_in = np.asarray(frac) * 375.0
    minutes_left = 375.0 - minutes_in
    return 0.75 + 1.6 * np.exp(-minutes_in / 20.0) + 0.8 * np.exp(-minutes_left / 25.0)


@dataclass
class _Underlying:
    key: str
    price: float
    vol_s: float  # per-second volatility


@dataclass
class SimState:
    """Everything a partition needs to resume exactly (picklable, used as the snapshot)."""

    day: date
    step: int  # steps since the open of ``day``
    rng_state: dict
    under_rng_state: dict
    under_price: np.ndarray
    price: np.ndarray
    volume: np.ndarray
    oi: np.ndarray
    seq: np.ndarray
    last_ts: np.ndarray
    bad_emitted: int = 0


@dataclass
class _Static:
    instruments: list[Instrument]
    keys: list[str]
    kind: np.ndarray  # 0 index, 1 stock, 2 future, 3 call, 4 put
    tick: np.ndarray
    lot: np.ndarray
    vol_s: np.ndarray
    rate: np.ndarray  # mean ticks per second
    spread_ticks: np.ndarray
    under_idx: np.ndarray  # index into the underlyings, -1 for stocks
    strike: np.ndarray
    expiry_ns: np.ndarray
    unders: list[str] = field(default_factory=list)
    under_vol_s: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per-second vol of each underlying


_KIND = {InstrumentType.INDEX: 0, InstrumentType.EQ: 1, InstrumentType.FUT: 2, InstrumentType.CE: 3, InstrumentType.PE: 4}


class MarketSimulator:
    """Generates one group's ticks, one 1-second step at a time.

    >>> from datetime import date
    >>> from connectors.brokers.universe import build_universe
    >>> u = build_universe(date(2026, 11, 23), size=20)
    >>> sim = MarketSimulator(u, all_instruments=u, seed=7, group=0, day=date(2026, 11, 23))
    >>> ticks, depth, bad = sim.step()
    >>> all(t.ltp > 0 for t in ticks), len(bad)
    (True, 0)
    """

    def __init__(
        self,
        instruments: list[Instrument],
        *,
        all_instruments: list[Instrument],
        seed: int,
        group: int,
        day: date,
        bad_tick_rate: float = 0.0,
        state: SimState | None = None,
    ) -> None:
        self.group = group
        self.bad_tick_rate = bad_tick_rate
        self._s = self._static(instruments, all_instruments)
        self._rng = np.random.default_rng([seed, group])
        under_rng = np.random.default_rng([seed, 10_000])  # shared by all groups: same index path
        self._under_rng = under_rng
        if state is None:
            n = len(instruments)
            under_price = np.array(
                [next(i.last_price for i in all_instruments if i.instrument == k) for k in self._s.unders], dtype=float
            )
            price = np.array([i.last_price for i in instruments], dtype=float)
            state = SimState(
                day=day,
                step=0,
                rng_state=self._rng.bit_generator.state,
                under_rng_state=under_rng.bit_generator.state,
                under_price=under_price,
                price=price,
                volume=np.zeros(n, dtype=np.int64),
                oi=np.where(self._s.kind >= 2, self._s.lot * 2000, 0).astype(np.int64),
                seq=np.zeros(n, dtype=np.int64),
                last_ts=np.zeros(n, dtype=np.int64),
            )
            self.state = state
            self._derive_prices(
                np.full(n, session_open_ns(day)),
                np.repeat(state.under_price[None, :], n, 0) if len(self._s.unders) else np.zeros((n, 0)),
                np.arange(n),
                init=True,
            )
        else:
            self.state = state
            self._rng.bit_generator.state = state.rng_state
            self._under_rng.bit_generator.state = state.under_rng_state

    # ------------------------------------------------------------------ setup

    @staticmethod
    def _static(instruments: list[Instrument], all_instruments: list[Instrument]) -> _Static:
        unders = [i.instrument for i in all_instruments if i.instrument_type is InstrumentType.INDEX]
        vols = {u.key: u.annual_vol for u in INDICES}
        stock_vol = {f"NSE:{s}": v for s, _p, v in STOCKS}
        n = len(instruments)
        kind = np.array([_KIND[i.instrument_type] for i in instruments], dtype=np.int8)
        under_idx = np.array(
            [
                unders.index(i.instrument)
                if i.instrument_type is InstrumentType.INDEX
                else unders.index(i.underlying)
                if i.underlying in unders
                else -1
                for i in instruments
            ],
            dtype=np.int64,
        )
        annual = np.array([vols.get(i.instrument, stock_vol.get(i.instrument, 0.25)) for i in instruments])
        rate = np.select([kind == 0, kind == 1, kind == 2], [1.0, 2.0, 3.0], 1.2)
        spread = np.select([kind == 0, kind == 1, kind == 2], [1, 1, 2], 2).astype(np.int64)
        expiry_ns = np.array(
            [
                int(datetime.combine(date.fromisoformat(i.expiry), SESSION_CLOSE, IST).astimezone(UTC).timestamp() * 1e9)
                if i.expiry
                else 0
                for i in instruments
            ],
            dtype=np.int64,
        )
        return _Static(
            instruments=instruments,
            keys=[i.instrument for i in instruments],
            kind=kind,
            tick=np.array([i.tick_size for i in instruments]),
            lot=np.array([max(i.lot_size, 1) for i in instruments], dtype=np.int64),
            vol_s=annual / math.sqrt(_YEAR_S),
            rate=rate[:n],
            spread_ticks=spread,
            under_idx=under_idx,
            strike=np.array([i.strike or 0.0 for i in instruments]),
            expiry_ns=expiry_ns,
            unders=unders,
            under_vol_s=np.array([vols.get(k, 0.15) for k in unders]) / math.sqrt(_YEAR_S),
        )

    # ------------------------------------------------------------------ pricing

    def _derive_prices(self, ts: np.ndarray, spot: np.ndarray, idx: np.ndarray, init: bool = False) -> np.ndarray:
        """Prices of derivatives/indices at times ``ts`` given spot rows (one per tick)."""
        s = self._s
        kind = s.kind[idx]
        ui = s.under_idx[idx]
        has_under = ui >= 0
        sp = np.where(has_under, spot[np.arange(len(idx)), np.maximum(ui, 0)] if spot.shape[1] else 0.0, 0.0)
        # Calendar time to expiry, floored at one hour so expiry-day options stay priced.
        t_years = np.maximum((s.expiry_ns[idx] - ts) / 1e9 / (365.0 * 86_400.0), 1.0 / (365 * 24))
        out = self.state.price[idx].copy()
        out = np.where(kind == 0, sp, out)
        out = np.where(kind == 2, sp * np.exp(RATE * t_years), out)
        opt = kind >= 3
        if opt.any():
            moneyness = np.log(np.where(opt, s.strike[idx], 1.0) / np.where(opt, sp, 1.0))
            vol = 0.13 + 0.9 * moneyness * moneyness + np.where(ui == 1, 0.03, 0.0)
            bs = black_scholes(np.where(opt, sp, 1.0), np.where(opt, s.strike[idx], 1.0), t_years, vol, kind == 3)
            out = np.where(opt, bs, out)
        tick = s.tick[idx]
        out = np.round(np.maximum(np.round(out / tick) * tick, tick), 2)
        if init:
            self.state.price[idx] = out
        return out

    # ------------------------------------------------------------------ stepping

    @property
    def now_ns(self) -> int:
        """Market time at the start of the next step."""
        return session_open_ns(self.state.day) + self.state.step * STEP_NS

    def step(self) -> tuple[list[Tick], list[DepthSnapshot], list[tuple[str, dict]]]:
        """Advance one second of market time. Returns (ticks, depth, bad ticks as raw dicts)."""
        ticks, depth, bad, _times = self._advance()
        return ticks, depth, bad

    def step_events(self) -> tuple[list[Tick | DepthSnapshot | tuple[str, dict]], np.ndarray]:
        """Advance one second of market time. Returns its events - ticks, depth books and bad
        ticks as ``(defect, raw dict)`` - merged in event-time order (ties in that order), and
        their event times."""
        ticks, depth, bad, times = self._advance()
        order = np.argsort(times, kind="stable")
        events: list[Any] = ticks + depth + bad
        return [events[k] for k in order.tolist()], times[order]

    def _advance(self) -> tuple[list[Tick], list[DepthSnapshot], list[tuple[str, dict]], np.ndarray]:
        """One step: ticks (by instrument, then time), depth, bad ticks, and the event time of
        each of them in that order."""
        st, s, rng = self.state, self._s, self._rng
        if st.step * STEP_NS >= SESSION_NS:  # session over: next trading day
            self._roll_day()
        t0 = self.now_ns
        frac = st.step * STEP_NS / SESSION_NS
        act = float(activity(frac))

        # Underlying paths on a 100 ms grid (identical in every group).
        u_vol = s.under_vol_s
        n_u = len(s.unders)
        if n_u:
            dt = 1.0 / GRID
            z = self._under_rng.standard_normal((GRID, n_u))
            jumps = (self._under_rng.random((GRID, n_u)) < 1 / 7200 * dt) * self._under_rng.normal(0, 0.004, (GRID, n_u))
            lr = u_vol * act * math.sqrt(dt) * z - 0.5 * (u_vol * act) ** 2 * dt + jumps
            path = st.under_price * np.exp(np.cumsum(lr, axis=0))  # (GRID, n_u)
            st.under_price = path[-1].copy()
        else:
            path = np.zeros((GRID, 0))

        # Tick arrivals.
        counts = rng.poisson(s.rate * act)
        n = int(counts.sum())
        idx = np.repeat(np.arange(len(s.keys)), counts)
        offs = (rng.random(n) * STEP_NS).astype(np.int64)
        order = np.lexsort((offs, idx))
        idx, offs = idx[order], offs[order]
        ts = t0 + offs
        grid_pos = np.minimum(offs * GRID // STEP_NS, GRID - 1)
        spot = path[grid_pos] if n_u else np.zeros((n, 0))

        # Stock prices: GBM between consecutive ticks of the same instrument.
        price = self._derive_prices(ts, spot, idx)
        stock = s.kind[idx] == 1
        if stock.any():
            prev_ts = np.where(st.last_ts[idx] > 0, st.last_ts[idx], ts - STEP_NS)
            first = np.ones(n, dtype=bool)
            first[1:] = idx[1:] != idx[:-1]
            prev_ts = np.where(first, prev_ts, np.concatenate(([0], ts[:-1])))
            dt = np.maximum(ts - prev_ts, 1) / 1e9
            vol = s.vol_s[idx] * act
            lr = np.where(stock, vol * np.sqrt(dt) * rng.standard_normal(n) - 0.5 * vol * vol * dt, 0.0)
            jump = (rng.random(n) < 1 / 7200) * rng.normal(0, 0.01, n)
            lr = lr + np.where(stock, jump, 0.0)
            cum = np.cumsum(lr)
            starts = np.flatnonzero(first)
            base = np.repeat(cum[starts] - lr[starts], np.diff(np.append(starts, n)))
            raw = st.price[idx] * np.exp(cum - base)
            tick = s.tick[idx]
            price = np.where(stock, np.round(np.maximum(np.round(raw / tick) * tick, tick), 2), price)

        # Quantities, cumulative volume, open interest.
        kind = s.kind[idx]
        lot = s.lot[idx]
        qty = np.where(kind == 0, 0, np.where(kind == 1, rng.geometric(0.01, n), lot * rng.geometric(0.3, n)))
        qty = qty.astype(np.int64)
        prev_price = st.price[idx]
        ret = np.where(prev_price > 0, price / np.where(prev_price > 0, prev_price, 1.0) - 1.0, 0.0)
        d_oi = np.where(kind >= 2, lot * np.round(rng.normal(400 * np.clip(ret, -0.05, 0.05), 1.0, n)), 0).astype(np.int64)
        spread = s.spread_ticks[idx] * s.tick[idx]
        bid = np.round(np.round((price - spread * rng.integers(0, 2, n)) / s.tick[idx]) * s.tick[idx], 2)
        bid = np.maximum(bid, 0.0)
        ask = np.round(bid + spread, 2)
        bid_qty = np.where(kind == 0, 0, lot * rng.integers(1, 40, n))
        ask_qty = np.where(kind == 0, 0, lot * rng.integers(1, 40, n))

        # Running per-instrument totals, vectorized: idx is grouped by instrument, so a
        # segmented cumulative sum gives each tick's cumulative volume, OI and sequence.
        first_of = np.ones(n, dtype=bool)
        first_of[1:] = idx[1:] != idx[:-1]
        seg = np.cumsum(first_of) - 1
        seg_start = np.flatnonzero(first_of)

        def running(start: np.ndarray, delta: np.ndarray) -> np.ndarray:
            c = np.cumsum(delta)
            return start[idx] + c - (c[seg_start] - delta[seg_start])[seg]

        vol_run = running(st.volume, qty)
        oi_run = np.maximum(running(st.oi, d_oi), 0)  # OI is floored at zero
        seq_run = running(st.seq, np.ones(n, dtype=np.int64))
        keys = s.keys
        ticks = [
            Tick(
                instrument=keys[i],
                ts_event=t,
                ts_init=t,
                seq=q,
                ltp=p,
                last_qty=lq,
                volume=v,
                oi=o,
                bid=b,
                ask=a,
                bid_qty=bq,
                ask_qty=aq,
            )
            for i, t, q, p, lq, v, o, b, a, bq, aq in zip(
                idx.tolist(),
                ts.tolist(),
                seq_run.tolist(),
                price.tolist(),
                qty.tolist(),
                vol_run.tolist(),
                oi_run.tolist(),
                bid.tolist(),
                ask.tolist(),
                bid_qty.tolist(),
                ask_qty.tolist(),
                strict=True,
            )
        ]
        if n:
            last = np.flatnonzero(np.append(idx[1:] != idx[:-1], True))
            li = idx[last]
            st.price[li] = price[last]
            st.last_ts[li] = ts[last]
            st.volume[li] = vol_run[last]
            st.oi[li] = oi_run[last]
            st.seq[li] = seq_run[last]
            booked = s.kind[li] != 0  # an index has no order book
            book_ts = ts[last][booked]
            depth = self._depth(li[booked], book_ts, bid[last][booked], ask[last][booked])
        else:
            book_ts, depth = ts[:0], []
        bad = self._bad_ticks(t0) if self.bad_tick_rate > 0 else []
        st.step += 1
        st.rng_state = rng.bit_generator.state
        st.under_rng_state = self._under_rng.bit_generator.state
        times = np.concatenate((ts, book_ts, np.array([raw["ts_event"] for _, raw in bad], dtype=np.int64)))
        return ticks, depth, bad, times

    def _depth(self, li: np.ndarray, ts: np.ndarray, best_bid: np.ndarray, best_ask: np.ndarray) -> list[DepthSnapshot]:
        """One five-level book per instrument ``li`` at time ``ts`` around its quote
        (``best_bid``, ``best_ask``): the instruments that ticked in this step, at their last
        tick. The levels of every book are built in one pass over flat lists; a book is then
        two slices of them."""
        s, rng = self._s, self._rng
        m = len(li)
        if not m:
            return []
        tick = s.tick[li][:, None]
        steps = np.arange(5)[None, :]
        # Per book, ten levels: five bids (best first) then five asks (best first).
        px = np.round(np.hstack((best_bid[:, None] - steps * tick, best_ask[:, None] + steps * tick)), 2)
        qty = rng.integers(1, 60, (m, 10)) * s.lot[li][:, None]
        orders = rng.integers(1, 25, (m, 10))
        tot_bid = (7 * qty[:, :5].sum(axis=1)).tolist()
        tot_ask = (7 * qty[:, 5:].sum(axis=1)).tolist()
        levels = list(map(DepthLevel, px.ravel().tolist(), qty.ravel().tolist(), orders.ravel().tolist()))
        deep_bid = (px[:, 4] <= 0).tolist()  # a near-zero option's deep bids would be non-positive
        out = []
        book, keys = DepthSnapshot, s.keys
        for r, (i, t) in enumerate(zip(li.tolist(), ts.tolist(), strict=True)):
            k = 10 * r
            bids = tuple(levels[k : k + 5])
            if deep_bid[r]:
                bids = tuple(b for b in bids if b.price > 0)
            out.append(
                book(
                    instrument=keys[i],
                    ts_event=t,
                    ts_init=t,
                    bids=bids,
                    asks=tuple(levels[k + 5 : k + 10]),
                    total_bid_qty=tot_bid[r],
                    total_ask_qty=tot_ask[r],
                )
            )
        return out

    def _bad_ticks(self, t0: int) -> list[tuple[str, dict]]:
        """Malformed ticks as raw payloads (what a broken feed would send), with the defect."""
        rng, s = self._rng, self._s
        k = int(rng.poisson(self.bad_tick_rate * float(s.rate.sum())))
        out = []
        for _ in range(k):
            i = int(rng.integers(0, len(s.keys)))
            defect = ("non_positive_price", "non_finite", "volume_backwards", "unknown_instrument", "malformed")[
                int(rng.integers(0, 5))
            ]
            p = float(self.state.price[i])
            # Stamped at the end of the step, after every valid tick of it, so "volume backwards"
            # is backwards relative to what the validator has seen.
            raw = {
                "instrument": s.keys[i],
                "ts_event": t0 + STEP_NS - 1 - int(rng.integers(0, 1000)),
                "seq": -1,
                "ltp": p,
                "last_qty": 1,
                "volume": int(self.state.volume[i]),
                "oi": int(self.state.oi[i]),
                "bid": p,
                "ask": p + float(s.tick[i]),
                "bid_qty": 1,
                "ask_qty": 1,
            }
            raw["ts_init"] = raw["ts_event"]
            if defect == "non_positive_price":
                raw["ltp"] = -abs(p)
            elif defect == "non_finite":
                raw["ltp"] = float("nan")
            elif defect == "volume_backwards":
                if raw["volume"] == 0:
                    defect, raw["volume"] = "negative_quantity", -1
                else:
                    raw["volume"] = max(0, raw["volume"] - 1 - int(rng.integers(0, 1000)))
            elif defect == "unknown_instrument":
                raw["instrument"] = f"NSE:NOSUCH{int(rng.integers(0, 1000))}"
            else:
                del raw["ltp"]
            self.state.bad_emitted += 1
            out.append((defect, raw))
        return out

    def _roll_day(self) -> None:
        st = self.state
        st.day = next_trading_day(st.day)
        st.step = 0
        gap = self._under_rng.normal(0, 0.006, len(st.under_price))
        st.under_price = st.under_price * np.exp(gap)
        stock = self._s.kind == 1
        st.price = np.where(stock, st.price * np.exp(self._rng.normal(0, 0.012, len(st.price))), st.price)
        st.volume[:] = 0
