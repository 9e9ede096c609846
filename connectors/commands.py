"""Control commands onto ``ctl.commands``: the one way the CLI and the API command the flows.

A command is keyed by its account (so one account's commands stay in order on one partition)
and is only reported sent once the broker has acknowledged it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Producer

from connectors.kafka import KafkaClientConfig, KafkaUnavailable
from schemas.codec import encode
from schemas.topics import TopicCatalog


def command_fields(account: str, issued_by: str, now: int | None = None) -> dict[str, Any]:
    """The fields every command carries: a fresh id, the account, who issued it, when (wall clock)."""
    ts = time.time_ns() if now is None else now
    return {"command_id": uuid.uuid4().hex[:20], "account": account, "issued_by": issued_by, "ts_event": ts,
            "ts_init": ts}  # fmt: skip


class CommandPublisher:
    """Publishes commands and waits for the broker's acknowledgement (one producer, reused)."""

    def __init__(self, client: KafkaClientConfig, catalog: TopicCatalog, timeout_s: float = 10.0) -> None:
        self._producer: Producer | None = Producer(client.producer(**{"linger.ms": 0}))
        self._topic = catalog.name("ctl.commands")
        self._timeout = timeout_s

    def publish(self, cmd: Any) -> None:
        if self._producer is None:
            msg = "the command publisher is closed"
            raise KafkaUnavailable(msg)
        errors: list[str] = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(str(err))

        self._producer.produce(self._topic, encode(cmd), getattr(cmd, "account", "").encode(), on_delivery=delivered)
        if self._producer.flush(self._timeout) or errors:
            msg = f"command {cmd.command_id} was not acknowledged by the broker: {'; '.join(errors) or 'timeout'}"
            raise KafkaUnavailable(msg)

    def close(self) -> None:
        """Flush and destroy the producer (its threads stop before this returns)."""
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.flush(self._timeout)
            del producer
