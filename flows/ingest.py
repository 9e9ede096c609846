"""Ingest flow: the simulated market into ``md.ticks`` and ``md.depth``.

    python -m bytewax.run flows.ingest

Source partitions are instrument groups (``TICKTAPE_INGEST_PARTITIONS``), each a
:class:`MarketSimulator` paced by ``TICKTAPE_SIM_SPEED`` (0 = as fast as possible). A
validation step keyed by group rejects malformed or impossible ticks with a reason; they
go to ``md.dlq`` with their payload and are counted in ``ticktape_ticks_rejected_total``.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import bytewax.operators as op
import msgspec
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from prometheus_client import Counter

from connectors.brokers.simulator import IST, STEP_NS, MarketSimulator, SimState
from connectors.brokers.universe import build_universe
from connectors.kafka import OutRecord, ProducerSink
from connectors.shutdown import STOP
from operators.validation import TickValidator
from schemas.codec import encode
from schemas.market import DepthSnapshot, Instrument, RejectReason, Tick, rejected
from schemas.topics import TopicCatalog

log = logging.getLogger("ticktape.ingest")

TICKS_IN = Counter("ticktape_ticks_in_total", "Ticks received by ingest (valid or not)")
TICKS_OUT = Counter("ticktape_ticks_out_total", "Valid ticks published to md.ticks")
REJECTED = Counter("ticktape_ticks_rejected_total", "Market-data events rejected at ingest", ["reason"])


@dataclass(frozen=True)
class SimConfig:
    universe: tuple[Instrument, ...]
    seed: int
    groups: int
    day: date
    speed: float  # market seconds per wall second; 0 = unpaced
    bad_tick_rate: float = 0.0
    max_steps: int | None = None  # stop after this many seconds of market time (bounded runs)
    shard: int = 0  # this process owns the groups g with g % shards == shard
    shards: int = 1

    def members(self, group: int) -> list[Instrument]:
        return list(self.universe[group :: self.groups])


@dataclass
class _Resume:
    state: SimState  # simulator state before the step being emitted
    steps: int  # steps completed before that one
    emitted: int  # events of that step already emitted


# Events in time order - Tick, DepthSnapshot, or a bad tick as (defect, raw payload) - are the
# ingest flow's items.
Chunk = list[Any]


class _SimPartition(StatefulSourcePartition[tuple[str, Chunk], _Resume]):
    def __init__(self, cfg: SimConfig, group: int, resume: _Resume | None) -> None:
        self._cfg, self._key = cfg, f"g{group}"
        members = cfg.members(group)
        kw = {
            "all_instruments": list(cfg.universe),
            "seed": cfg.seed,
            "group": group,
            "day": cfg.day,
            "bad_tick_rate": cfg.bad_tick_rate,
        }
        self._sim = MarketSimulator(members, **kw, state=copy.deepcopy(resume.state) if resume else None)
        self._steps = resume.steps if resume else 0
        self._items: Chunk = []  # this step's events in time order
        self._due: list[int] = []  # paced: when each is due, ns since the run's start
        self._pos = 0  # events of this step emitted
        self._before = copy.deepcopy(self._sim.state)
        self._wall0 = time.monotonic()
        self._elapsed0 = self._steps * STEP_NS
        if resume is not None:  # regenerate the interrupted step, skip what was emitted
            self._generate()
            self._pos = resume.emitted

    def _generate(self) -> None:
        self._before = copy.deepcopy(self._sim.state)
        events, times = self._sim.step_events()
        self._items, self._pos = events, 0
        if self._cfg.speed > 0:  # when each is due: ns since the run's start
            start = self._sim.now_ns - STEP_NS  # market time of this step's start (after any day roll)
            self._due = (times + (self._steps * STEP_NS - start)).tolist()
        self._steps += 1

    def _elapsed(self) -> float:
        if self._cfg.speed <= 0:
            return float("inf")
        return self._elapsed0 + (time.monotonic() - self._wall0) * self._cfg.speed * 1e9

    def next_batch(self) -> list[tuple[str, Chunk]]:
        """At most one item: ``(group, chunk)``, the chunk holding every event due so far in
        time order. Chunks, not events, are the dataflow's items: Bytewax's per-item cost
        (routing, the unkey step, the sink call) is then paid per second of market time
        rather than per tick."""
        if STOP.is_set():
            raise StopIteration
        chunk: Chunk = []
        elapsed = self._elapsed()
        while True:
            items, pos = self._items, self._pos
            if self._cfg.speed <= 0:
                chunk.extend(items[pos:])
                self._pos = len(items)
            else:
                due = self._due
                while pos < len(items) and due[pos] <= elapsed:
                    pos += 1
                chunk.extend(items[self._pos : pos])
                self._pos = pos
            if self._pos < len(self._items):
                break
            if self._cfg.max_steps is not None and self._steps >= self._cfg.max_steps:
                if not chunk:
                    raise StopIteration
                break
            if self._steps * STEP_NS > elapsed:
                break
            self._generate()
            if self._cfg.speed <= 0:
                chunk.extend(self._items)
                self._pos = len(self._items)
                break
        return [(self._key, chunk)] if chunk else []

    def next_awake(self) -> datetime | None:
        if self._cfg.speed <= 0:
            return None
        # Coalesce into ~50 ms batches: few, large producer batches (see connectors.kafka).
        return datetime.now(UTC) + timedelta(milliseconds=50)

    def snapshot(self) -> _Resume:
        return _Resume(
            state=copy.deepcopy(self._before), steps=self._steps - 1 if self._items else self._steps, emitted=self._pos
        )


class SimulatorSource(FixedPartitionedSource[tuple[str, Chunk], _Resume]):
    """One partition per instrument group; resumable from its snapshot."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg

    def list_parts(self) -> list[str]:
        cfg = self.cfg
        return [f"g{g}" for g in range(cfg.groups) if g % cfg.shards == cfg.shard]

    def build_part(self, step_id: str, for_part: str, resume_state: _Resume | None) -> _SimPartition:
        return _SimPartition(self.cfg, int(for_part[1:]), resume_state)


class ValidateLogic(op.StatefulBatchLogic[Chunk, list[OutRecord], TickValidator]):
    """Validates one group's chunks of events and encodes them for their topic (or the DLQ):
    one list of records per batch of chunks."""

    def __init__(self, validator: TickValidator, topics: dict[str, str]) -> None:
        self.v = validator
        self.t_ticks, self.t_depth, self.t_dlq = topics["md.ticks"], topics["md.depth"], topics["md.dlq"]

    def on_batch(self, values: list[Chunk]) -> tuple[list[list[OutRecord]], bool]:
        out: list[Any] = []
        check, check_depth, ticks_topic, depth_topic = self.v.check, self.v.check_depth, self.t_ticks, self.t_depth
        n_in = n_ok = 0
        for chunk in values:
            for ev in chunk:
                kind = type(ev)
                if kind is Tick:
                    n_in += 1
                    verdict = check(ev)
                    if verdict is None:
                        out.append((ticks_topic, ev.instrument, encode(ev)))  # an OutRecord; a bare tuple is 3x cheaper
                        n_ok += 1
                    else:
                        out.append(self._reject(ticks_topic, ev.instrument, *verdict, encode(ev), ev.ts_event))
                elif kind is DepthSnapshot:
                    verdict = check_depth(ev)
                    if verdict is None:
                        out.append((depth_topic, ev.instrument, encode(ev)))
                    else:
                        out.append(self._reject(depth_topic, ev.instrument, *verdict, encode(ev), ev.ts_event))
                else:
                    n_in += 1
                    n_ok += self._raw(ev, out)
        TICKS_IN.inc(n_in)
        TICKS_OUT.inc(n_ok)
        return ([out] if out else []), op.StatefulBatchLogic.RETAIN

    def _raw(self, ev: tuple[str, Any], out: list[OutRecord]) -> int:
        """A raw payload from a broken feed: 1 if it still decodes to a valid tick."""
        _defect, raw = ev
        tick, reason, detail = self.v.check_raw(raw)
        if reason is None and tick is not None:
            out.append(OutRecord(self.t_ticks, tick.instrument, encode(tick)))
            return 1
        inst = raw.get("instrument") if isinstance(raw, dict) else None
        ts = raw.get("ts_event", 0) if isinstance(raw, dict) else 0
        out.append(self._reject(self.t_ticks, inst, reason, detail or "", _json(raw), int(ts or 0)))
        return 0

    def _reject(
        self, topic: str, instrument: str | None, reason: RejectReason, detail: str, payload: bytes, ts: int
    ) -> OutRecord:
        REJECTED.labels(reason.value).inc()
        ev = rejected(topic, instrument, reason, detail, payload, ts)
        return OutRecord(self.t_dlq, instrument or "", encode(ev))

    def snapshot(self) -> TickValidator:
        return copy.deepcopy(self.v)


def _json(raw: Any) -> bytes:
    try:
        return msgspec.json.encode(raw)
    except (TypeError, msgspec.EncodeError):
        return repr(raw).encode()


def build(
    source: FixedPartitionedSource,
    universe: list[Instrument] | tuple[Instrument, ...],
    catalog: TopicCatalog,
    producer: dict[str, Any],
) -> Dataflow:
    """The ingest dataflow: ``source`` items are ``(group, chunk)`` (see :data:`Chunk`);
    ``producer`` is the Kafka producer configuration of its sink."""
    known = [i.instrument for i in universe]
    topics = {name: catalog.name(name) for name in ("md.ticks", "md.depth", "md.dlq")}
    flow = Dataflow("ingest")
    events = op.input("feed", flow, source)
    checked = op.stateful_batch("validate", events, lambda resume: ValidateLogic(resume or TickValidator(known), topics))
    records = op.map("unkey", checked, lambda kv: kv[1])
    op.output("publish", records, ProducerSink(producer, chunked=True))
    return flow


def sim_config_from_settings(settings: Any) -> SimConfig:
    day = settings.sim_date or datetime.now(IST).date()
    universe = tuple(build_universe(day, settings.sim_instruments))
    return SimConfig(
        universe=universe,
        seed=settings.sim_seed,
        groups=settings.ingest_partitions,
        day=day,
        speed=settings.sim_speed,
        bad_tick_rate=settings.sim_bad_tick_rate,
        max_steps=settings.sim_seconds,
        shard=settings.ingest_shard,
        shards=settings.ingest_processes,
    )


def _flow_from_env() -> Dataflow:
    from flows.runtime import flow_context

    ctx = flow_context("ingest")
    cfg = sim_config_from_settings(ctx.settings)
    log.info(
        "simulating %d instruments in %d groups, seed %d, day %s, speed %s",
        len(cfg.universe),
        cfg.groups,
        cfg.seed,
        cfg.day,
        cfg.speed or "unpaced",
    )
    return build(SimulatorSource(cfg), cfg.universe, ctx.catalog, ctx.kafka.producer())


def __getattr__(name: str) -> Dataflow:
    # `python -m bytewax.run flows.ingest` looks up `flow`; build it only then, so importing
    # this module (tests, benchmarks) reads no environment.
    if name == "flow":
        return _flow_from_env()
    raise AttributeError(name)
