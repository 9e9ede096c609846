"""/ws on a real uvicorn server fed by the real broker: 50 subscribed clients, one of which
never reads; the others get every tick of their instruments in order, the slow one is dropped."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import uvicorn
from confluent_kafka import Producer
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from api.app import create_app
from api.security import create_user, issue_access_token
from connectors.kafka import KafkaClientConfig
from connectors.processes import free_port
from connectors.settings import load_settings
from schemas.codec import encode
from schemas.market import Tick
from schemas.topics import TopicCatalog

TOKEN = ""
SYMBOLS = [f"NSE:S{k:02d}" for k in range(20)]
BULK = [f"NSE:B{k:02d}" for k in range(20)]  # only the slow client subscribes to these
PER_SYMBOL = 1200  # the slow client's 48,000 frames (~11 MB) overflow the socket buffers and its queue


@pytest.fixture
def server(kafka: KafkaClientConfig, catalog: TopicCatalog, database_url: str, tmp_path: Path) -> Iterator[int]:
    port = free_port()
    s = load_settings({"TICKTAPE_KAFKA_BOOTSTRAP": kafka.bootstrap, "TICKTAPE_DATABASE_URL": database_url,
                       "TICKTAPE_TOPIC_PREFIX": catalog.prefix, "TICKTAPE_HOME": str(tmp_path)})  # fmt: skip
    app = create_app(s, environ={})
    with psycopg.connect(database_url, autocommit=True) as conn:
        user = create_user(conn, "operator", "correct horse battery staple")
    global TOKEN
    TOKEN = issue_access_token(user.id, app.state.ticktape.security)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started

    async def first_client() -> None:  # the hub starts with the first client
        async with connect(f"ws://127.0.0.1:{port}/ws?token={TOKEN}"):
            pass

    asyncio.run(first_client())
    assert app.state.hub.ready.wait(30)  # the hub reads the topics from their current ends
    yield port
    srv.should_exit = True
    th.join(10)


def _produce(kafka: KafkaClientConfig, catalog: TopicCatalog) -> None:
    p = Producer(kafka.producer())
    t0 = 1_795_405_500 * 10**9
    for n in range(PER_SYMBOL):
        for k, sym in enumerate(SYMBOLS + BULK):
            ts = t0 + n * 10**9 + k
            t = Tick(instrument=sym, ts_event=ts, ts_init=ts, seq=n, ltp=100.0 + n * 0.05, last_qty=1, volume=n + 1, oi=0,
                     bid=100.0, ask=100.1, bid_qty=1, ask_qty=1)  # fmt: skip
            p.produce(catalog.name("md.ticks"), encode(t), sym.encode())
        p.poll(0)
    assert p.flush(30) == 0


async def _session(port: int, kafka: KafkaClientConfig, catalog: TopicCatalog) -> tuple[list[dict[str, list[int]]], int]:
    url = f"ws://127.0.0.1:{port}/ws?token={TOKEN}"
    readers = []
    for k in range(49):
        ws = await connect(url, max_queue=None)
        mine = [SYMBOLS[k % 20], SYMBOLS[(k + 7) % 20]]
        await ws.send(json.dumps({"type": "subscribe", "channel": "ticks", "instruments": mine}))
        assert json.loads(await ws.recv())["type"] == "subscribed"
        readers.append((ws, mine))
    # The slow client: a tiny receive buffer, subscribed to everything, and it never reads.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: it caps the TCP window
    sock.connect(("127.0.0.1", port))
    slow = await connect(url, sock=sock, max_queue=1, compression=None)  # no deflate: its backlog is real bytes
    await slow.send(json.dumps({"type": "subscribe", "channel": "ticks", "instruments": SYMBOLS + BULK}))
    await asyncio.to_thread(_produce, kafka, catalog)

    async def read(ws, mine: list[str]) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
        got: dict[str, list[int]] = {s: [] for s in mine}
        while sum(map(len, got.values())) < PER_SYMBOL * len(mine):
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert frame["type"] == "tick", frame
            got[frame["instrument"]].append(frame["data"]["seq"])
        await ws.close()
        return got

    results = await asyncio.gather(*(read(ws, mine) for ws, mine in readers))
    code = 0
    try:
        while True:
            await asyncio.wait_for(slow.recv(), 10)
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd else -1
    return results, code


def test_fifty_clients_and_a_slow_one(server: int, kafka: KafkaClientConfig, catalog: TopicCatalog) -> None:
    results, slow_code = asyncio.run(_session(server, kafka, catalog))
    for got in results:
        for seqs in got.values():
            assert seqs == list(range(PER_SYMBOL))  # every tick, in order
    assert slow_code == 1013  # dropped: "try again later"


def test_protocol_errors_and_origin(server: int) -> None:
    async def go() -> list[dict]:  # type: ignore[type-arg]
        out = []
        async with connect(f"ws://127.0.0.1:{server}/ws?token={TOKEN}") as ws:
            for msg in ("not json", json.dumps({"type": "dance"}), json.dumps({"type": "subscribe", "channel": "news"}),
                        json.dumps({"type": "subscribe", "channel": "ticks", "instruments": [1]})):  # fmt: skip
                await ws.send(msg)
                out.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "subscribe", "channel": "candles", "instruments": ["NSE:A", "NSE:B"]}))
            out.append(json.loads(await ws.recv()))
            await ws.send(json.dumps({"type": "unsubscribe", "channel": "candles", "instruments": ["NSE:A"]}))
            out.append(json.loads(await ws.recv()))
        with pytest.raises(InvalidStatus) as err:
            await connect(f"ws://127.0.0.1:{server}/ws?token={TOKEN}", origin="https://evil.example")  # type: ignore[arg-type]
        assert err.value.response.status_code == 403
        for bad in ("", "?token=forged.token.value"):
            with pytest.raises(InvalidStatus) as err:
                await connect(f"ws://127.0.0.1:{server}/ws{bad}")
            assert err.value.response.status_code == 403
        return out

    replies = asyncio.run(go())
    assert [r.get("code") for r in replies[:4]] == ["bad_json", "bad_type", "bad_channel", "bad_instruments"]
    assert replies[4] == {"type": "subscribed", "channel": "candles", "instruments": ["NSE:A", "NSE:B"]}
    assert replies[5] == {"type": "unsubscribed", "channel": "candles", "instruments": ["NSE:B"]}


def test_a_tick_reaches_its_subscriber_without_waiting_for_a_batch(
    server: int, kafka: KafkaClientConfig, catalog: TopicCatalog
) -> None:
    """A quiet feed is not held back to fill a batch: the hub once read with consume(500,
    0.1), which waits the whole 0.1 s unless 500 records come, so a tick reached the screen
    50-70 ms after the broker had it (median here); now it is a few ms."""

    async def go() -> list[float]:
        p = Producer(kafka.producer(**{"linger.ms": 0}))
        delays = []
        async with connect(f"ws://127.0.0.1:{server}/ws?token={TOKEN}") as ws:
            await ws.send(json.dumps({"type": "subscribe", "channel": "ticks", "instruments": [SYMBOLS[0]]}))
            assert json.loads(await ws.recv())["type"] == "subscribed"
            for n in range(20):
                ts = 1_795_405_500 * 10**9 + n * 10**9
                t = Tick(instrument=SYMBOLS[0], ts_event=ts, ts_init=ts, seq=n, ltp=100.0, last_qty=1, volume=n + 1,
                         oi=0, bid=100.0, ask=100.1, bid_qty=1, ask_qty=1)  # fmt: skip
                p.produce(catalog.name("md.ticks"), encode(t), SYMBOLS[0].encode())
                assert p.flush(5) == 0
                sent = time.perf_counter()
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                delays.append(time.perf_counter() - sent)
                assert frame["data"]["seq"] == n
                await asyncio.sleep(0.03)
        return delays

    delays = sorted(asyncio.run(go()))
    assert delays[len(delays) // 2] < 0.025, f"median {delays[len(delays) // 2] * 1e3:.1f} ms from broker to client"
