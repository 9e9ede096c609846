"""Structured logging for every ticktape process.

One call at start-up, ``setup_logging(component, fmt, level)``; afterwards use stdlib
loggers and pass context as ``extra``. Fields with a meaning across the system are
``component``, ``instrument``, ``order_id``, ``strategy``, ``topic``; any other ``extra`` key is
kept too. ``console`` format is for people, ``json`` one object per line for machines.

>>> import logging
>>> setup_logging("demo", "json", "INFO", stream=sys.stdout)
>>> logging.getLogger("ticktape.x").info("tick rejected", extra={"instrument": "NSE:INFY"})  # doctest: +ELLIPSIS
{"ts":"...","level":"INFO","component":"demo","logger":"ticktape.x","msg":"tick rejected","instrument":"NSE:INFY"}
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _RESERVED}


class JsonFormatter(logging.Formatter):
    def __init__(self, component: str) -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "component": getattr(record, "component", self.component),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: v for k, v in _extras(record).items() if k != "component"})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


class ConsoleFormatter(logging.Formatter):
    _COLORS = {"DEBUG": "\033[2m", "INFO": "", "WARNING": "\033[33m", "ERROR": "\033[31m", "CRITICAL": "\033[31;1m"}

    def __init__(self, component: str, color: bool) -> None:
        super().__init__()
        self.component = component
        self.color = color

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        extras = _extras(record)
        component = extras.pop("component", self.component)
        ctx = " ".join(f"{k}={v}" for k, v in extras.items())
        line = f"{ts} {record.levelname:<7} {component:<10} {record.getMessage()}" + (f"  {ctx}" if ctx else "")
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if self.color and record.levelname in self._COLORS and self._COLORS[record.levelname]:
            line = f"{self._COLORS[record.levelname]}{line}\033[0m"
        return line


def setup_logging(component: str, fmt: str = "console", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Configure the root logger for this process (idempotent)."""
    out = stream or sys.stderr
    handler = logging.StreamHandler(out)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(component))
    else:
        handler.setFormatter(ConsoleFormatter(component, color=out.isatty()))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
