"""The supervisor's view of its children, shared through ``<home>/run/flows.json``.

The supervisor writes it; the API and ``ticktape services status`` read it.
"""

from __future__ import annotations

from pathlib import Path

import msgspec


class FlowStatus(msgspec.Struct, kw_only=True):
    name: str
    state: str  # starting | running | restarting | stopped | failed
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None
    detail: str = ""
    metrics_port: int | None = None  # the child's Prometheus endpoint on 127.0.0.1


def status_path(home: Path) -> Path:
    return home / "run" / "flows.json"


def read_flow_status(home: Path) -> dict[str, FlowStatus]:
    path = status_path(home)
    try:
        return msgspec.json.decode(path.read_bytes(), type=dict[str, FlowStatus])
    except (OSError, msgspec.DecodeError):
        return {}


def write_flow_status(home: Path, flows: dict[str, FlowStatus]) -> None:
    path = status_path(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(flows))
    tmp.replace(path)
