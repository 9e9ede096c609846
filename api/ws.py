"""``/ws``: live market data and trading events over one WebSocket per client.

Protocol (JSON text frames; every frame has a ``type``)::

    → {"type": "subscribe", "channel": "ticks" | "orderbook" | "candles", "instruments": ["NSE:INFY", ...]}
    ← {"type": "subscribed", "channel": "ticks", "instruments": [...]}
    → {"type": "unsubscribe", "channel": "ticks", "instruments": [...]}     (empty list: the whole channel)
    ← {"type": "tick" | "orderbook" | "candle", "instrument": "...", "data": <Tick | DepthSnapshot | Candle>}
    ← {"type": "order_update" | "fill" | "position_update" | "risk_event", "data": <OrderUpdate | ...>}
    ← {"type": "error", "code": "...", "detail": "..."}

``data`` is the event exactly as its topic carries it (the ``schemas`` structs, JSON), so the
hub never re-encodes an event: one envelope is built per event and shared by every client.
Trading events go to every client. One consumer thread - started with the first client - reads
the topics from their end and hands events to the event loop; each client has a bounded queue, and a client whose queue is
full - it does not read - is disconnected (close code 1013) instead of slowing anyone else.
A client may subscribe to at most ``max_instruments`` instruments per channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition
from fastapi import WebSocket, WebSocketDisconnect
from prometheus_client import Counter, Gauge

from connectors.kafka import KafkaClientConfig, end_offsets
from schemas.topics import TopicCatalog

log = logging.getLogger("ticktape.api.ws")
CHANNELS = {"ticks": ("md.ticks", b"tick"), "orderbook": ("md.depth", b"orderbook"), "candles": ("md.candles", b"candle")}
BROADCAST = {"ord.updates": b"order_update", "ord.fills": b"fill", "pf.positions": b"position_update",
             "risk.events": b"risk_event"}  # fmt: skip
WS_CLIENTS = Gauge("ticktape_ws_clients", "Connected WebSocket clients")
WS_DROPPED = Counter("ticktape_ws_dropped_clients_total", "WebSocket clients disconnected", ["reason"])
WS_SENT = Counter("ticktape_ws_messages_total", "WebSocket frames queued to clients")


@dataclass(eq=False)
class Client:
    ws: WebSocket
    queue: asyncio.Queue[bytes | None]
    subs: dict[str, set[str]] = field(default_factory=dict)  # channel -> instruments
    dropped: bool = False


class Hub:
    """Fans topic events out to the subscribed clients (see the module docstring)."""

    def __init__(self, queue_size: int = 1000, max_instruments: int = 500) -> None:
        self.queue_size, self.max_instruments = queue_size, max_instruments
        self.clients: set[Client] = set()
        self._by_topic: dict[str, bytes] = {}
        self._client: KafkaClientConfig | None = None
        self._stop = threading.Event()
        self.ready = threading.Event()  # reading the topics (events from here on reach the clients)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inbox: asyncio.Queue[list[tuple[str, bytes | None, bytes]]] = asyncio.Queue()
        self._pump_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ consumer

    def configure(self, client: KafkaClientConfig, catalog: TopicCatalog) -> None:
        """Where to read from; nothing is read until :meth:`ensure_started` (the first client)."""
        self._client = client
        self._by_topic = {catalog.name(t): kind for t, kind in [*CHANNELS.values(), *BROADCAST.items()]}

    def ensure_started(self) -> None:
        """Start reading every fan-out topic from its current end (events from now on), once."""
        if self._thread is not None or self._client is None:
            return
        self._loop = asyncio.get_running_loop()
        self._pump_task = asyncio.create_task(self._pump())
        self._thread = threading.Thread(target=self._consume, args=(self._client, self._by_topic), name="ws-hub",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        """Stop and wait for the consumer thread: its Kafka clients are closed when this returns."""
        self._stop.set()
        if self._pump_task is not None:
            self._pump_task.cancel()
        if self._thread is not None:
            self._thread.join()

    def _consume(self, client: KafkaClientConfig, topics: dict[str, bytes]) -> None:
        starts: dict[tuple[str, int], int] = {}
        for t in topics:
            if self._stop.is_set():
                return
            try:
                starts.update(end_offsets(client, t, timeout=5.0))
            except Exception:
                log.exception("the WebSocket hub cannot read the end of %s; no live events from it", t)
        c = Consumer(client.consumer(**{"fetch.wait.max.ms": 20}))
        c.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
        self.ready.set()
        loop = self._loop
        assert loop is not None
        try:
            while not self._stop.is_set():
                # Wait for one record, then take what else has arrived without waiting:
                # consume(n, t) alone holds every record until n arrive or t passes.
                first = c.poll(0.1)
                if first is None:
                    continue
                batch = []
                for m in (first, *c.consume(499, 0)):
                    err = m.error()
                    if err is None:
                        batch.append((m.topic(), m.key(), m.value() or b""))
                    elif err.code() != KafkaError._PARTITION_EOF:
                        log.warning("WebSocket hub: %s", err)
                if batch:
                    loop.call_soon_threadsafe(self._inbox.put_nowait, batch)
        finally:
            c.close()

    # ------------------------------------------------------------------ fan-out (event loop)

    async def _pump(self) -> None:
        """One batch at a time, yielding between batches so the clients' writers keep pace."""
        while True:
            self.dispatch(await self._inbox.get())
            await asyncio.sleep(0)

    def dispatch(self, batch: list[tuple[str, bytes | None, bytes]]) -> None:
        for topic, key, value in batch:
            kind = self._by_topic.get(topic)
            if kind is None:
                continue
            channel = _CHANNEL_OF_KIND.get(kind)
            if channel is None:  # trading events: everyone
                frame = b'{"type":"' + kind + b'","data":' + value + b"}"
                targets = list(self.clients)
            else:
                inst = (key or b"").decode()
                frame = b'{"type":"' + kind + b'","instrument":' + json.dumps(inst).encode() + b',"data":' + value + b"}"
                targets = [c for c in self.clients if inst in c.subs.get(channel, ())]
            for c in targets:
                self.offer(c, frame)

    def offer(self, c: Client, frame: bytes) -> None:
        if c.dropped:
            return
        try:
            c.queue.put_nowait(frame)
            WS_SENT.inc()
        except asyncio.QueueFull:
            self.drop(c, "slow")

    def drop(self, c: Client, reason: str) -> None:
        if c.dropped:
            return
        c.dropped = True
        WS_DROPPED.labels(reason).inc()
        while not c.queue.empty():  # free the memory now; the writer sees the end marker
            c.queue.get_nowait()
        c.queue.put_nowait(None)

    # ------------------------------------------------------------------ one client

    async def serve(self, ws: WebSocket, on_message: Callable[[Client, dict[str, Any]], None] | None = None) -> None:
        """Run one accepted client until it leaves or is dropped."""
        c = Client(ws, asyncio.Queue(maxsize=self.queue_size))
        self.clients.add(c)
        WS_CLIENTS.set(len(self.clients))
        writer = asyncio.create_task(self._write(c))
        try:
            while not c.dropped:
                try:
                    text = await ws.receive_text()
                except WebSocketDisconnect:
                    break
                self.handle(c, text)
        finally:
            self.clients.discard(c)
            WS_CLIENTS.set(len(self.clients))
            c.dropped = True
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer

    async def _write(self, c: Client) -> None:
        while True:
            frame = await c.queue.get()
            if frame is None:
                with contextlib.suppress(Exception):
                    await c.ws.close(code=1013, reason="too slow: events were not read")
                return
            await c.ws.send_text(frame.decode())

    def handle(self, c: Client, text: str) -> None:
        """Apply one client message; errors are answered, never raised."""
        try:
            msg = json.loads(text)
        except json.JSONDecodeError:
            self._error(c, "bad_json", "messages are JSON objects")
            return
        if not isinstance(msg, dict) or msg.get("type") not in ("subscribe", "unsubscribe"):
            self._error(c, "bad_type", 'expected {"type": "subscribe" | "unsubscribe", ...}')
            return
        channel, instruments = msg.get("channel"), msg.get("instruments", [])
        if channel not in CHANNELS:
            self._error(c, "bad_channel", f"channel must be one of {', '.join(CHANNELS)}")
            return
        if not isinstance(instruments, list) or not all(isinstance(i, str) and 0 < len(i) <= 64 for i in instruments):
            self._error(c, "bad_instruments", "instruments is a list of EXCHANGE:SYMBOL strings")
            return
        subs = c.subs.setdefault(channel, set())
        if msg["type"] == "subscribe":
            if len(subs | set(instruments)) > self.max_instruments:
                self._error(c, "too_many", f"at most {self.max_instruments} instruments per channel")
                return
            subs.update(instruments)
            reply = {"type": "subscribed", "channel": channel, "instruments": sorted(subs)}
        else:
            if instruments:
                subs.difference_update(instruments)
            else:
                subs.clear()
            reply = {"type": "unsubscribed", "channel": channel, "instruments": sorted(subs)}
        self.offer(c, json.dumps(reply).encode())

    def _error(self, c: Client, code: str, detail: str) -> None:
        self.offer(c, json.dumps({"type": "error", "code": code, "detail": detail}).encode())


_CHANNEL_OF_KIND = {kind: ch for ch, (_t, kind) in CHANNELS.items()}
