"""PositionBook: average price, realized/unrealized PnL, charges, duplicates, and a stateful model check."""

from __future__ import annotations

import pickle
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from operators.portfolio import PnL, PositionBook
from schemas.orders import Fill, Side
from tests import stubs


def fill(side: Side, qty: int, price: float, **kw: Any) -> Fill:
    return stubs.fill(side, qty, price, **{"instrument": "NSE:INFY", **kw})


B, S = Side.BUY, Side.SELL


@pytest.mark.parametrize(
    ("fills", "qty", "avg", "realized"),
    [
        ([(B, 10, 100.0)], 10, 100.0, 0.0),
        ([(B, 10, 100.0), (B, 30, 120.0)], 40, 115.0, 0.0),  # weighted on increase
        ([(B, 10, 100.0), (S, 4, 110.0)], 6, 100.0, 40.0),  # partial close: avg unchanged
        ([(B, 10, 100.0), (S, 10, 90.0)], 0, 0.0, -100.0),  # closed: avg reset
        ([(B, 10, 100.0), (S, 15, 110.0)], -5, 110.0, 100.0),  # flip: remainder opens at the fill price
        ([(S, 10, 100.0), (S, 10, 90.0), (B, 5, 80.0)], -15, 95.0, 75.0),  # short side
        ([(S, 10, 100.0), (B, 25, 105.0)], 15, 105.0, -50.0),  # short → long flip
        ([(B, 10, 100.0), (S, 10, 110.0), (B, 5, 90.0)], 5, 90.0, 100.0),  # re-open after flat
    ],
)
def test_fill_math(fills: list[tuple[Side, int, float]], qty: int, avg: float, realized: float) -> None:
    book = PositionBook("acc")
    for side, q, px in fills:
        p = book.apply_fill(fill(side, q, px))
    assert (p.qty, p.avg_price, p.realized_pnl) == (qty, pytest.approx(avg), pytest.approx(realized))


def test_unrealized_charges_and_totals() -> None:
    book = PositionBook("acc")
    book.apply_fill(fill(B, 10, 100.0, charges=1.5))
    book.apply_fill(fill(S, 5, 200.0, strategy="s2", charges=2.0))
    book.apply_fill(fill(B, 3, 50.0, strategy="s2", instrument="NSE:TCS", charges=0.5))
    assert book.mark("NSE:INFY", 110.0, 5) == ("s1", "s2")
    assert book.mark("NSE:SBIN", 1.0, 5) == ()  # nobody holds it: nothing to do
    assert book.net_qty("NSE:INFY") == 5
    assert book.pnl("s1") == PnL(0.0, 100.0, 1.5)
    s2 = book.pnl("s2")
    assert (s2.unrealized, s2.charges) == (pytest.approx(5 * (200.0 - 110.0)), 2.5)  # TCS still at its fill price
    assert book.pnl() == PnL(0.0, pytest.approx(550.0), 4.0)
    assert book.day_pnl() == pytest.approx(546.0) == book.pnl().day
    book.apply_fill(fill(S, 10, 120.0))
    assert book.pnl("s1").net_realized == pytest.approx(198.5)
    assert book.position("s1", "NSE:INFY").unrealized_pnl == 0.0
    assert book.pnl("nobody") == PnL(0.0, 0.0, 0.0)


def test_duplicate_fill_ignored_and_rejects_foreign_account() -> None:
    book = PositionBook("acc")
    f = fill(B, 10, 100.0, trade_id="T1")
    book.apply_fill(f)
    assert book.has_fill(f)
    assert book.apply_fill(f).qty == 10
    book.start_day()  # yesterday's ids are still remembered
    assert book.apply_fill(f).qty == 10
    with pytest.raises(ValueError, match="account"):
        book.apply_fill(Fill(**{**{k: getattr(f, k) for k in f.__struct_fields__}, "account": "other"}))


def test_start_day_keeps_open_positions_and_drops_flat_ones() -> None:
    book = PositionBook("acc")
    book.apply_fill(fill(B, 10, 100.0, charges=1.0))
    book.apply_fill(fill(S, 10, 90.0, instrument="NSE:TCS"))
    book.apply_fill(fill(B, 10, 80.0, instrument="NSE:TCS"))
    book.start_day()
    assert [(p.instrument, p.qty, p.avg_price, p.realized_pnl) for p in book.positions()] == [("NSE:INFY", 10, 100.0, 0.0)]
    assert book.pnl().charges == 0.0 and book.loss_streak("s1") == 0


def test_loss_streak_counts_losing_round_trips() -> None:
    book = PositionBook("acc")
    for px in (90.0, 95.0):  # two losers
        book.apply_fill(fill(B, 1, 100.0))
        book.apply_fill(fill(S, 1, px))
    assert book.loss_streak("s1") == 2
    book.apply_fill(fill(B, 1, 100.0))
    book.apply_fill(fill(S, 2, 99.0))  # a losing trip closed by a flip: 3; the short opens a new trip
    assert book.loss_streak("s1") == 3
    book.apply_fill(fill(B, 1, 90.0, charges=1.0))  # +9 gross, +8 net: a win resets
    assert book.loss_streak("s1") == 0


def test_mark_after_pickle_is_identical() -> None:
    book = PositionBook("acc")
    book.apply_fill(fill(B, 7, 101.3))
    book.mark("NSE:INFY", 99.1, 2)
    copy = pickle.loads(pickle.dumps(book))
    for b in (book, copy):
        b.mark("NSE:INFY", 104.7, 3)
        b.apply_fill(fill(S, 3, 105.0, trade_id="same"))
    assert book.positions() == copy.positions() and book.pnl() == copy.pnl()


def test_gross_exposure_follows_marks_and_fills() -> None:
    book = PositionBook("acc")
    book.apply_fill(fill(B, 10, 100.0))
    book.apply_fill(fill(S, 4, 50.0, strategy="s2", instrument="NSE:TCS"))
    assert (book.gross_exposure(), book.gross_exposure("s1"), book.gross_exposure("s2")) == (1200.0, 1000.0, 200.0)
    book.mark("NSE:INFY", 101.5, 2)
    assert (book.gross_exposure(), book.gross_exposure("s1"), book.value("s1", "NSE:INFY")) == (1215.0, 1015.0, 1015.0)
    book.apply_fill(fill(S, 10, 102.0))  # flat: out of the sums, its value 0
    assert (book.gross_exposure(), book.gross_exposure("s1"), book.value("s1", "NSE:INFY")) == (200.0, 0.0, 0.0)
    assert (book.open_count(), book.holders("NSE:INFY"), book.holders("NSE:TCS")) == (1, (), ("s2",))
    assert book.gross_exposure("nobody") == 0.0


def test_a_snapshot_from_before_gross_exposure_loads() -> None:
    book = PositionBook("acc")
    book.apply_fill(fill(B, 10, 100.0))
    book.mark("NSE:INFY", 101.0, 2)
    state = book.__getstate__()
    for t in (state["_account"], *state["_strategy"].values()):  # an older snapshot's totals had no gross
        del t.gross
    old = PositionBook.__new__(PositionBook)
    old.__setstate__(state)
    assert (old.gross_exposure(), old.open_count(), old.pnl()) == (1010.0, 1, book.pnl())
    old.apply_fill(fill(B, 5, 102.0, strategy="s2"))
    assert old.gross_exposure() == 1010.0 + 5 * 101.0  # the instrument's last mark, not the fill price


# ---------------------------------------------------------------------- stateful model check

KEYS = [("s1", "NSE:INFY"), ("s1", "NSE:TCS"), ("s2", "NSE:INFY")]


class _Reference:
    """Average cost kept as an exact cost basis, plus FIFO lots for the method-free total PnL."""

    def __init__(self) -> None:
        self.qty = 0
        self.basis = Fraction(0)  # signed cost of the open units
        self.realized = Fraction(0)
        self.cash = Fraction(0)  # -Σ signed qty × price
        self.lots: list[list[Fraction]] = []  # FIFO [signed qty, price]

    def apply(self, n: int, px: Fraction) -> None:
        self.cash -= n * px
        if self.qty == 0 or (self.qty > 0) == (n > 0):
            self.basis += n * px
        else:
            closed = min(abs(self.qty), abs(n))
            unit = self.basis / self.qty  # average cost per unit
            sign = 1 if self.qty > 0 else -1
            self.realized += sign * closed * (px - unit)
            self.basis -= sign * closed * unit
            rest = n + sign * closed  # what is left of the fill after closing
            if rest:
                self.basis = rest * px
        self.qty += n
        self._fifo(n, px)

    def _fifo(self, n: int, px: Fraction) -> None:
        while n and self.lots and (self.lots[0][0] > 0) != (n > 0):
            lot = self.lots[0]
            take = min(abs(lot[0]), abs(n))
            lot[0] += take if lot[0] < 0 else -take
            n += take if n < 0 else -take
            if lot[0] == 0:
                self.lots.pop(0)
        if n:
            self.lots.append([Fraction(n), px])

    def fifo_total(self, mark: Fraction) -> Fraction:
        """Realized + unrealized at ``mark``: the same for every cost method."""
        return self.cash + sum((q * mark for q, _ in self.lots), Fraction(0))


class PortfolioMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.book = PositionBook("acc")
        self.ref = {k: _Reference() for k in KEYS}
        self.applied: list[Fill] = []
        self.charges = 0.0

    @rule(
        k=st.sampled_from(KEYS),
        side=st.sampled_from([B, S]),
        qty=st.integers(1, 50),
        ticks=st.integers(1, 40_000),
        charges=st.sampled_from([0.0, 0.25, 3.5]),
    )
    def trade(self, k: tuple[str, str], side: Side, qty: int, ticks: int, charges: float) -> None:
        px = ticks / 20  # on a 0.05 tick
        f = fill(side, qty, px, strategy=k[0], instrument=k[1], charges=charges)
        before = {kk: self.book.qty(*kk) for kk in KEYS}
        self.book.apply_fill(f)
        self.applied.append(f)
        self.charges += charges
        self.ref[k].apply(qty if side is B else -qty, Fraction(ticks, 20))
        assert all(self.book.qty(*kk) == before[kk] for kk in KEYS if kk != k)

    @rule(data=st.data())
    def replay(self, data: st.DataObject) -> None:
        if not self.applied:
            return
        before = [self.book.position(*k) for k in KEYS]
        self.book.apply_fill(data.draw(st.sampled_from(self.applied)))
        assert [self.book.position(*k) for k in KEYS] == before  # a duplicate changes nothing

    @rule(instrument=st.sampled_from(["NSE:INFY", "NSE:TCS"]), ticks=st.integers(1, 40_000))
    def mark(self, instrument: str, ticks: int) -> None:
        before = {k: self.book.qty(*k) for k in KEYS}
        self.book.mark(instrument, ticks / 20, 9)
        assert {k: self.book.qty(*k) for k in KEYS} == before  # marks never move positions

    @rule()
    def restart(self) -> None:
        """A snapshot mid-stream: the indexes are rebuilt, the running totals kept as they are."""
        copy = pickle.loads(pickle.dumps(self.book))
        assert copy.pnl() == self.book.pnl() and copy.gross_exposure() == self.book.gross_exposure()
        self.book = copy

    @invariant()
    def gross_exposure_and_indexes_match_a_scan(self) -> None:
        book, positions = self.book, self.book.positions()
        for strategy in (None, "s1", "s2"):
            scan = sum(abs(p.qty) * p.last_price for p in positions if strategy in (None, p.strategy))
            assert book.gross_exposure(strategy) == pytest.approx(scan, rel=1e-12, abs=1e-6)
        for k in KEYS:
            p = book.position(*k)
            assert book.value(*k) == (abs(p.qty) * p.last_price if p is not None and p.qty else 0.0)
        for inst in ("NSE:INFY", "NSE:TCS"):
            assert book.holders(inst) == tuple(p.strategy for p in positions if p.instrument == inst and p.qty)
        assert list(book._of_strategy) == list(dict.fromkeys(p.strategy for p in positions))
        for strategy, of in book._of_strategy.items():
            assert [p.instrument for p in of] == [p.instrument for p in positions if p.strategy == strategy]

    @invariant()
    def positions_match_fills(self) -> None:
        for k in KEYS:
            signed = sum(f.qty if f.side is B else -f.qty for f in self.applied if (f.strategy, f.instrument) == k)
            assert self.book.qty(*k) == signed == self.ref[k].qty
        open_keys = {k for k in KEYS if self.ref[k].qty}
        assert set(self.book.open_keys()) == open_keys and self.book.open_count() == len(open_keys)

    @invariant()
    def pnl_matches_reference(self) -> None:
        total_realized = Fraction(0)
        for k in KEYS:
            ref, pos = self.ref[k], self.book.position(*k)
            if pos is None:
                continue
            assert pos.realized_pnl == pytest.approx(float(ref.realized), abs=1e-6)
            if ref.qty:
                assert pos.avg_price == pytest.approx(float(ref.basis / ref.qty), rel=1e-9)
                mark = Fraction(pos.last_price)
                assert pos.realized_pnl + pos.unrealized_pnl == pytest.approx(float(ref.fifo_total(mark)), abs=1e-6)
            else:
                assert pos.avg_price == 0.0 and pos.unrealized_pnl == 0.0
                assert pos.realized_pnl == pytest.approx(float(ref.cash), abs=1e-6)  # flat: every method agrees
            total_realized += ref.realized
        pnl = self.book.pnl()
        assert pnl.realized == pytest.approx(float(total_realized), abs=1e-6)
        assert pnl.charges == pytest.approx(self.charges)
        unreal = sum(p.unrealized_pnl for p in self.book.positions())
        assert pnl.unrealized == pytest.approx(unreal, abs=1e-6)


PortfolioMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
TestPortfolioMachine = PortfolioMachine.TestCase
