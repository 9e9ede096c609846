"""The analytics pipeline against the real broker: replay is exact and repeatable, and live
mode closes the bar of an instrument that stopped ticking on time."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from datetime import date, timedelta

from bytewax.testing import run_main
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from connectors.brokers.universe import build_universe
from connectors.kafka import KafkaClientConfig, read_all
from connectors.shutdown import STOP
from flows import live
from flows.pipeline import MarketClock, PipelineConfig
from operators.analytics import AnalyticsConfig
from operators.candles import CandleBook
from schemas.analytics import IndicatorSnapshot, OptionChainStats
from schemas.codec import codec_for, encode
from schemas.market import Candle, RejectedEvent, Tick
from schemas.topics import TopicCatalog
from tests.flows.test_ingest_persist import _expected, _ingest

DAY = date(2026, 11, 23)
S = 10**9


def _by_key(values: list[bytes], value_type: type) -> dict[str, list[bytes]]:
    codec = codec_for(value_type)
    out: dict[str, list[bytes]] = defaultdict(list)
    for v in values:
        out[codec.decode(v).instrument].append(v)
    return out


def test_replay_candles_are_exact_and_byte_identical(kafka: KafkaClientConfig, catalog: TopicCatalog) -> None:
    cfg = _ingest(kafka, catalog, steps=150, bad_rate=0.0)
    ticks, _ = _expected(cfg)
    acfg = AnalyticsConfig(timeframes=("1s", "5s", "1m"), publish_timeframes=("1m",))
    pcfg = PipelineConfig(analytics=acfg, clock=None, summary_timeframes=("1m",))

    runs = []
    for _ in range(2):
        run_main(live.build(kafka, catalog, cfg.universe, pcfg, tail=False))
        candles = read_all(kafka, catalog.name("md.candles"))
        runs.append(_by_key(candles, Candle))
        # clear the output topics for the second run
        from connectors.kafka import create_topics, delete_topics

        admin = kafka.admin()
        delete_topics(admin, [catalog.name("md.candles"), catalog.name("md.analytics")])
        create_topics(admin, catalog)
    assert runs[0] == runs[1]  # byte-identical, instrument by instrument

    # Every instrument's candles equal a CandleBook fed its ticks directly.
    per_inst: dict[str, list[Tick]] = defaultdict(list)
    for t in ticks:
        per_inst[t.instrument].append(t)
    codec = codec_for(Candle)
    for inst, its in per_inst.items():
        book = CandleBook(inst, acfg.timeframes)
        want: list[Candle] = []
        for t in sorted(its, key=lambda t: t.seq):
            book.on_tick(t, t.ts_event, want)
        book.flush(its[-1].ts_event if its else 0, want)
        got = [codec.decode(v) for v in runs[0][inst]]
        assert sorted(got, key=lambda c: (c.timeframe, c.open_time)) == sorted(
            want, key=lambda c: (c.timeframe, c.open_time)
        ), inst
    assert sum(len(v) for v in runs[0].values()) > 1000


def test_analytics_events_are_published(kafka: KafkaClientConfig, catalog: TopicCatalog) -> None:
    cfg = _ingest(kafka, catalog, steps=200, bad_rate=0.0)
    acfg = AnalyticsConfig(timeframes=("1s", "1m"), indicators=("ema:3", "rsi:3"), publish_timeframes=("1m",))
    run_main(live.build(kafka, catalog, cfg.universe, PipelineConfig(analytics=acfg), tail=False))
    from schemas.analytics import AnalyticsEvent

    codec = codec_for(AnalyticsEvent)
    events = [codec.decode(v) for v in read_all(kafka, catalog.name("md.analytics"))]
    kinds = {type(e).__name__ for e in events}
    assert {"IndicatorSnapshot", "OptionChainStats", "MarketSummary"} <= kinds, kinds
    snaps = [e for e in events if isinstance(e, IndicatorSnapshot)]
    assert all(e.timeframe == "1m" for e in snaps)
    assert any("ema_3" in e.values and "rsi_3" in e.values for e in snaps)
    chains = [e for e in events if isinstance(e, OptionChainStats)]
    assert any(e.pcr is not None and e.max_pain is not None for e in chains)


def test_live_mode_closes_an_idle_instruments_bar_on_time(kafka: KafkaClientConfig, catalog: TopicCatalog) -> None:
    """A stops ticking, B goes on: A's last 1s bar closes within bar end + grace + 100 ms."""
    universe = build_universe(DAY, 20)
    a, b = universe[5].instrument, universe[6].instrument
    grace = timedelta(milliseconds=300)
    acfg = AnalyticsConfig(timeframes=("1s", "1m"), indicators=("ema:3",), publish_timeframes=())
    clock = MarketClock(grace)
    timed_before = REGISTRY.get_sample_value("ticktape_step_batch_seconds_count", {"step": "instrument"}) or 0.0
    flow = live.build(kafka, catalog, universe, PipelineConfig(analytics=acfg, clock=clock), tail=True)
    runner = threading.Thread(target=run_main, args=(flow,), daemon=True)
    runner.start()

    base = 1_763_701_200 * S  # 2025-11-21 10:30:00 IST: any session time works, the clock is market time
    producer = Producer(kafka.producer(**{"linger.ms": 5}))
    topic = catalog.name("md.ticks")
    time.sleep(2.0)  # let the flow assign its partitions
    wall0 = time.time_ns()
    seq = {a: 0, b: 0}
    last_a = 0
    try:
        while (elapsed := time.time_ns() - wall0) < 4 * S:
            ts = base + elapsed
            for inst in (a, b) if elapsed < 1_500_000_000 else (b,):
                seq[inst] += 1
                t = Tick(
                    instrument=inst,
                    ts_event=ts,
                    ts_init=ts,
                    seq=seq[inst],
                    ltp=100.0 + seq[inst] % 5,
                    last_qty=1,
                    volume=seq[inst],
                    oi=0,
                    bid=99.9,
                    ask=100.1,
                    bid_qty=1,
                    ask_qty=1,
                )
                producer.produce(topic, encode(t), inst)
                if inst == a:
                    last_a = ts
            producer.poll(0)
            time.sleep(0.05)
        producer.flush(10)
        time.sleep(1.0)
    finally:
        STOP.set()
        runner.join(30)
        STOP.clear()
    candles = [codec_for(Candle).decode(v) for v in read_all(kafka, catalog.name("md.candles"))]
    bar_open = base + (last_a - base) // S * S  # the 1s bar holding A's last tick (base is a whole second)
    (last_bar,) = [c for c in candles if c.instrument == a and c.timeframe == "1s" and c.final and c.open_time == bar_open]
    due_wall = wall0 + (bar_open + S - base) + int(grace.total_seconds() * 1e9)
    late_by_ms = (last_bar.ts_init - due_wall) / 1e6
    print(f"idle bar closed {late_by_ms:.1f} ms after bar end + grace")
    assert -50 <= late_by_ms <= 100, f"closed {late_by_ms:.0f} ms after bar end + grace"
    dlq = [codec_for(RejectedEvent).decode(v) for v in read_all(kafka, catalog.name("md.dlq"))]
    assert dlq == []  # live ticks in order: nothing late
    timed = REGISTRY.get_sample_value("ticktape_step_batch_seconds_count", {"step": "instrument"}) - timed_before
    assert timed >= 10, f"{timed} instrument batches timed"  # live: every batch of A and B (46 here)


def test_late_and_undecodable_ticks_go_to_the_dead_letter_topic(kafka: KafkaClientConfig, catalog: TopicCatalog) -> None:
    universe = build_universe(DAY, 20)
    inst = universe[7].instrument
    base = 1_763_701_200 * S  # 10:30 IST
    producer = Producer(kafka.producer())
    topic = catalog.name("md.ticks")

    def tick(sec: float, seq: int, px: float) -> Tick:
        ts = base + int(sec * S)
        return Tick(
            instrument=inst,
            ts_event=ts,
            ts_init=ts,
            seq=seq,
            ltp=px,
            last_qty=1,
            volume=seq,
            oi=0,
            bid=px - 0.05,
            ask=px + 0.05,
            bid_qty=1,
            ask_qty=1,
        )

    sent = [tick(0.1, 1, 100.0), tick(1.2, 2, 101.0), tick(0.5, 3, 150.0), tick(2.5, 4, 102.0)]  # seq 3 is late
    for t in sent:
        producer.produce(topic, encode(t), inst, partition=0)
    producer.produce(topic, b'{"type":"Tick","ltp":', inst.encode(), partition=0)
    assert producer.flush(10) == 0
    acfg = AnalyticsConfig(timeframes=("1s",), indicators=("ema:3",), publish_timeframes=())
    run_main(live.build(kafka, catalog, universe, PipelineConfig(analytics=acfg, open_interest=False), tail=False))

    dlq = [codec_for(RejectedEvent).decode(v) for v in read_all(kafka, catalog.name("md.dlq"))]
    assert sorted(r.reason.value for r in dlq) == ["late", "malformed"]
    late = next(r for r in dlq if r.reason.value == "late")
    assert codec_for(Tick).decode(late.payload) == sent[2] and late.ts_event == sent[2].ts_event
    malformed = next(r for r in dlq if r.reason.value == "malformed")
    assert f"{topic}[0]@4" in malformed.detail
    candles = [codec_for(Candle).decode(v) for v in read_all(kafka, catalog.name("md.candles"))]
    assert [(c.open, c.high, c.close) for c in candles] == [
        (100.0, 100.0, 100.0),
        (101.0, 101.0, 101.0),
        (102.0, 102.0, 102.0),
    ]  # the late 150 rewrote nothing


def test_the_warm_up_note_says_how_long_a_fresh_start_waits_to_decide() -> None:
    import strategies.builtin  # noqa: F401
    from operators.strategy_host import Deployment
    from strategies.registry import REGISTRY as STRATEGIES

    def dep(sid: str, kind: str, tf: str, enabled: bool = True, **params: object) -> Deployment:
        return Deployment(sid, kind, STRATEGIES.params(kind, {"timeframe": tf, **params}), enabled=enabled)

    def bars(sym: str, tf: str, n: int, start: int = 0) -> list[Candle]:
        step = 60 * S if tf == "1m" else 300 * S
        return [Candle(instrument=sym, timeframe=tf, open_time=start + k * step, ts_event=start + (k + 1) * step,
                       ts_init=0, open=1.0, high=1.0, low=1.0, close=1.0, volume=1, trade_count=1, vwap=1.0, oi=0,
                       final=True)
                for k in range(n)]  # fmt: skip

    def note(deps: list[Deployment], warm: dict[str, list[Candle]], speed: float = 10) -> str | None:
        return live.warmup_note(deps, syms, warm, STRATEGIES, speed, session_open=TODAY)

    TODAY = 10**6 * S  # the session's open: stored candles from then on are today's and do not count
    syms = ["NSE:A", "NSE:B", "NSE:C"]
    rsi = dep("rsi", "rsi_reversion", "1m")  # 16 bars
    trend = dep("trend", "supertrend_trend", "5m")  # 12 bars
    parked = dep("parked", "ema_crossover", "1m", enabled=False, slow=200)
    cold = note([rsi, trend, parked], {})
    assert cold is not None and "stored candles cover none of it" in cold
    assert "rsi 16 x 1m on 3 instruments" in cold and "trend 12 x 5m on 3 instruments" in cold
    assert "parked" not in cold  # a disabled deployment waits for nothing
    assert cold.endswith("the longest is 1 h of market time from the day's first tick, 6 min at 10x speed")  # 12 x 5m
    # Earlier sessions' candles cover the 5m warm-up everywhere and the 1m one on two
    # instruments; the third has 10 of its 16 bars, and today's bars do not count.
    warm = {s: bars(s, "5m", 12) + (bars(s, "1m", 16) if s != "NSE:C" else []) for s in syms}
    warm["NSE:C"] += bars("NSE:C", "1m", 10) + bars("NSE:C", "1m", 16, start=TODAY)
    assert note([rsi, trend], warm, speed=0) == (
        "first decisions once warm-up bars have closed (where stored candles do not hold them): rsi 6 x 1m on 1 "
        "instrument; the longest is 6 min of market time from the day's first tick")  # fmt: skip
    warm["NSE:C"] += bars("NSE:C", "1m", 6, start=TODAY - 6 * 60 * S)
    assert note([rsi, trend], warm) is None
    # A warm-up longer than a session trades from a later day on.
    slow = dep("slow", "ema_crossover", "5m", slow=100)
    assert note([slow], {}) == (
        "first decisions once warm-up bars have closed (stored candles cover none of it): slow 101 x 5m on 3 "
        "instruments; the longest takes 2 sessions: it trades from a later day on")  # fmt: skip
