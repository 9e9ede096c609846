"""The charges model against hand-computed contract-note arithmetic, per segment class and exchange."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from operators.charges import DEFAULT_RATES, ChargeClass, Charges, ChargesModel, charge_class
from schemas.market import Instrument, InstrumentType
from schemas.orders import Product, Side
from tests.stubs import instrument as _inst

D = Decimal

INFY = _inst("NSE:INFY", InstrumentType.EQ)
INFY_BSE = _inst("BSE:INFY", InstrumentType.EQ)
NIFTY_FUT = _inst("NFO:NIFTY24DECFUT", InstrumentType.FUT, lot=25)
NIFTY_CE = _inst("NFO:NIFTY24DEC24000CE", InstrumentType.CE, lot=25)
SENSEX_CE = _inst("BFO:SENSEX24DEC80000CE", InstrumentType.CE, lot=10)
SENSEX_FUT = _inst("BFO:SENSEX24DECFUT", InstrumentType.FUT, lot=10)
NIFTY_INDEX = _inst("NSE:NIFTY 50", InstrumentType.INDEX)

# (instrument, product, side, qty, price) -> "brokerage stt exchange_txn sebi stamp_duty gst total"
# Every component is rounded half-up to the paisa; GST = 18% of the rounded brokerage + exchange + SEBI.
CASES = [
    # NSE intraday buy, turnover 1,50,000: brokerage min(20, 45) = 20; exch 150000*0.00297% = 4.455 -> 4.46;
    # SEBI 150000/1e6 = 0.15; stamp 150000*0.003% = 4.50; GST 0.18*(20+4.46+0.15) = 4.4298 -> 4.43
    pytest.param(INFY, Product.MIS, Side.BUY, 100, 1500.0, "20.00 0.00 4.46 0.15 4.50 4.43 33.54", id="eq-mis-buy"),
    # same sell: STT 150000*0.025% = 37.50, no stamp
    pytest.param(INFY, Product.MIS, Side.SELL, 100, 1500.0, "20.00 37.50 4.46 0.15 0.00 4.43 66.54", id="eq-mis-sell"),
    # small sell, turnover 2505: brokerage 0.03% = 0.7515 -> 0.75; STT 0.62625 -> 0.63; exch 0.0743985 -> 0.07;
    # SEBI 0.002505 -> 0.00; GST 0.18*(0.75+0.07) = 0.1476 -> 0.15; total 1.60
    pytest.param(INFY, Product.MIS, Side.SELL, 10, 250.5, "0.75 0.63 0.07 0.00 0.00 0.15 1.60", id="eq-mis-small"),
    # half-up at exactly half a paisa: turnover 5000, SEBI 0.005 -> 0.01 (banker's rounding would give 0.00);
    # brokerage 1.50; exch 0.1485 -> 0.15; stamp 0.15; GST 0.18*(1.50+0.15+0.01) = 0.2988 -> 0.30
    pytest.param(INFY, Product.MIS, Side.BUY, 50, 100.0, "1.50 0.00 0.15 0.01 0.15 0.30 2.11", id="eq-half-up"),
    # delivery buy, turnover 1,00,000: brokerage 0; STT 0.1% = 100; exch 2.97; SEBI 0.10; stamp 0.015% = 15;
    # GST 0.18*(0+2.97+0.10) = 0.5526 -> 0.55
    pytest.param(INFY, Product.CNC, Side.BUY, 50, 2000.0, "0.00 100.00 2.97 0.10 15.00 0.55 118.62", id="eq-cnc-buy"),
    pytest.param(INFY, Product.CNC, Side.SELL, 50, 2000.0, "0.00 100.00 2.97 0.10 0.00 0.55 103.62", id="eq-cnc-sell"),
    # BSE intraday: exch 150000*0.00375% = 5.625 -> 5.63; GST 0.18*(20+5.63+0.15) = 4.6404 -> 4.64
    pytest.param(INFY_BSE, Product.MIS, Side.BUY, 100, 1500.0, "20.00 0.00 5.63 0.15 4.50 4.64 34.92", id="bse-eq-mis-buy"),
    # futures sell, turnover 6,00,000: brokerage min(20, 180) = 20; STT 0.02% = 120; exch 0.00173% = 10.38; SEBI 0.60;
    # GST 0.18*(20+10.38+0.60) = 5.5764 -> 5.58
    pytest.param(NIFTY_FUT, Product.NRML, Side.SELL, 25, 24000.0, "20.00 120.00 10.38 0.60 0.00 5.58 156.56", id="fut-sell"),
    # futures buy: no STT, stamp 0.002% = 12.00; product does not matter for derivatives
    pytest.param(NIFTY_FUT, Product.MIS, Side.BUY, 25, 24000.0, "20.00 0.00 10.38 0.60 12.00 5.58 48.56", id="fut-buy"),
    # BFO futures, turnover 8,00,000: no exchange charge; SEBI 0.80; stamp 0.002% = 16; GST 0.18*(20+0.80) = 3.744 -> 3.74
    pytest.param(SENSEX_FUT, Product.NRML, Side.BUY, 10, 80000.0, "20.00 0.00 0.00 0.80 16.00 3.74 40.54", id="bfo-fut-buy"),
    # option buy, premium turnover 3012.5: flat 20; exch 0.03503% = 1.05528875 -> 1.06; SEBI 0.0030125 -> 0.00;
    # stamp 0.003% = 0.090375 -> 0.09; GST 0.18*(20+1.06) = 3.7908 -> 3.79
    pytest.param(NIFTY_CE, Product.NRML, Side.BUY, 25, 120.5, "20.00 0.00 1.06 0.00 0.09 3.79 24.94", id="opt-buy"),
    # option sell: STT 0.1% of premium = 3.0125 -> 3.01, no stamp
    pytest.param(NIFTY_CE, Product.MIS, Side.SELL, 25, 120.5, "20.00 3.01 1.06 0.00 0.00 3.79 27.86", id="opt-sell"),
    # BFO option sell, turnover 6000: STT 6.00; exch 0.0325% = 1.95; SEBI 0.006 -> 0.01; GST 0.18*21.96 = 3.9528 -> 3.95
    pytest.param(SENSEX_CE, Product.NRML, Side.SELL, 20, 300.0, "20.00 6.00 1.95 0.01 0.00 3.95 31.91", id="bfo-opt-sell"),
]  # fmt: skip


@pytest.mark.parametrize(("inst", "product", "side", "qty", "price", "expected"), CASES)
def test_charges_match_hand_computation(
    inst: Instrument, product: Product, side: Side, qty: int, price: float, expected: str
) -> None:
    c = ChargesModel().for_fill(inst, product, side, qty, price)
    got = (c.brokerage, c.stt, c.exchange_txn, c.sebi, c.stamp_duty, c.gst, c.total)
    assert got == tuple(D(x) for x in expected.split())
    assert c.turnover == D(str(price)) * qty


def _partials(inst: Instrument, product: Product, fills: list[tuple[int, float]]) -> list[Charges]:
    model, charged, out = ChargesModel(), D(0), []
    for qty, price in fills:
        c = model.for_fill(inst, product, Side.BUY, qty, price, brokerage_charged=charged)
        charged += c.brokerage
        out.append(c)
    return out


def test_brokerage_cap_is_charged_once_per_order_across_partial_fills() -> None:
    # order of 1000 @ 100: 0.03% of 1,00,000 = 30 > cap 20. Fills 300 + 300 + 400:
    # 9.00 (30000*0.03%), 9.00 (charged 18), then min(20-18, 12.00) = 2.00 -> 20 in all, not 9+9+12 = 30
    parts = _partials(INFY, Product.MIS, [(300, 100.0), (300, 100.0), (400, 100.0)])
    assert [c.brokerage for c in parts] == [D("9.00"), D("9.00"), D("2.00")]
    # one more fill after the cap is used up pays none
    assert ChargesModel().for_fill(INFY, Product.MIS, Side.BUY, 1, 100.0, brokerage_charged=D(20)).brokerage == D("0.00")


def test_below_the_cap_partial_fills_add_up_to_the_order_brokerage() -> None:
    # 10 @ 100 twice: 0.30 + 0.30 = 0.60 = 0.03% of 2000, the same as one fill of 20
    parts = _partials(INFY, Product.MIS, [(10, 100.0), (10, 100.0)])
    assert (
        sum(c.brokerage for c in parts)
        == D("0.60")
        == ChargesModel().for_fill(INFY, Product.MIS, Side.BUY, 20, 100.0).brokerage
    )


def test_flat_option_brokerage_is_charged_on_the_first_fill_only() -> None:
    parts = _partials(NIFTY_CE, Product.NRML, [(25, 100.0), (25, 101.0), (50, 99.5)])
    assert [c.brokerage for c in parts] == [D("20.00"), D("0.00"), D("0.00")]
    # GST follows: only the first fill pays GST on brokerage
    assert parts[1].gst == (D("0.18") * (parts[1].exchange_txn + parts[1].sebi)).quantize(D("0.01"))


@pytest.mark.parametrize(
    ("inst", "product", "cls"),
    [
        (INFY, Product.MIS, ChargeClass.EQ_INTRADAY),
        (INFY, Product.CNC, ChargeClass.EQ_DELIVERY),
        (INFY, Product.NRML, ChargeClass.EQ_DELIVERY),
        (NIFTY_FUT, Product.MIS, ChargeClass.FUTURES),
        (NIFTY_FUT, Product.NRML, ChargeClass.FUTURES),
        (NIFTY_CE, Product.MIS, ChargeClass.OPTIONS),
        (_inst("NFO:NIFTY24DEC24000PE", InstrumentType.PE), Product.NRML, ChargeClass.OPTIONS),
    ],
)
def test_charge_class(inst: Instrument, product: Product, cls: ChargeClass) -> None:
    assert charge_class(inst, product) is cls


def test_an_index_has_no_charges_schedule() -> None:
    with pytest.raises(ValueError, match="expected EQ, FUT, CE or PE"):
        ChargesModel().for_fill(NIFTY_INDEX, Product.MIS, Side.BUY, 1, 24000.0)


def test_a_missing_table_row_is_an_error_naming_the_class() -> None:
    model = ChargesModel(rates={ChargeClass.EQ_INTRADAY: DEFAULT_RATES[ChargeClass.EQ_INTRADAY]}, exchange_rates={})
    with pytest.raises(ValueError, match="OPTIONS"):
        model.for_fill(NIFTY_CE, Product.MIS, Side.BUY, 25, 100.0)


def test_rates_are_overridable_data() -> None:
    cheaper = dataclasses.replace(DEFAULT_RATES[ChargeClass.OPTIONS], brokerage_max=D(15))
    model = ChargesModel(rates={**DEFAULT_RATES, ChargeClass.OPTIONS: cheaper})
    assert model.for_fill(NIFTY_CE, Product.NRML, Side.BUY, 25, 120.5).brokerage == D("15.00")
    # the BFO row is an exchange override and still wins for BFO options
    assert model.for_fill(SENSEX_CE, Product.NRML, Side.BUY, 20, 300.0).brokerage == D("20.00")


def test_free_model_charges_nothing() -> None:
    c = ChargesModel.free().for_fill(NIFTY_CE, Product.NRML, Side.SELL, 25, 120.5)
    assert c.total == D("0.00")


@given(
    inst=st.sampled_from([INFY, INFY_BSE, NIFTY_FUT, NIFTY_CE, SENSEX_CE, SENSEX_FUT]),
    product=st.sampled_from(list(Product)),
    side=st.sampled_from(list(Side)),
    qty=st.integers(1, 10_000),
    ticks=st.integers(1, 2_000_000),
    charged=st.integers(0, 2500),
)
def test_breakdown_adds_up_and_brokerage_stays_under_the_cap(
    inst: Instrument, product: Product, side: Side, qty: int, ticks: int, charged: int
) -> None:
    price = round(ticks * 0.05, 2)
    prior = D(charged) / 100
    c = ChargesModel().for_fill(inst, product, side, qty, price, brokerage_charged=prior)
    parts = (c.brokerage, c.stt, c.exchange_txn, c.sebi, c.stamp_duty, c.gst)
    assert c.total == sum(parts)
    assert all(p >= 0 and p == p.quantize(D("0.01")) for p in parts)
    assert prior + c.brokerage <= max(D(20), prior)
