"""The typed topic catalog loaded from ``redpanda/topics.yaml``.

>>> from schemas.topics import load_catalog
>>> cat = load_catalog()
>>> cat["md.ticks"].value_type.__name__
'Tick'
>>> cat.scoped("bt.run1")["md.ticks"].name
'bt.run1.md.ticks'
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from schemas import analytics, control, market, orders, risk

DEFAULT_CATALOG = Path(__file__).resolve().parent.parent / "redpanda" / "topics.yaml"

# Event types a topic may carry, by the name used in topics.yaml.
VALUE_TYPES: dict[str, Any] = {
    "Tick": market.Tick,
    "DepthSnapshot": market.DepthSnapshot,
    "Candle": market.Candle,
    "RejectedEvent": market.RejectedEvent,
    "Analytics": analytics.AnalyticsEvent,
    "Instrument": market.Instrument,
    "TargetPosition": orders.TargetPosition,
    "OrderIntent": orders.OrderIntent,
    "VenueRequest": orders.VenueRequest,
    "OrderUpdate": orders.OrderUpdate,
    "Fill": orders.Fill,
    "Position": orders.Position,
    "RiskEvent": risk.RiskEvent,
    "Control": control.Control,
}

_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


class CatalogError(ValueError):
    """The catalog file is invalid; the message names the file and the entry."""


class TopicSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    partitions: int
    key: str
    value: str
    retention_ms: int
    cleanup_policy: str
    description: str = ""
    catalog_name: str = ""  # set on run-scoped copies: the name in topics.yaml

    @property
    def value_type(self) -> Any:
        return VALUE_TYPES[self.value]

    @property
    def base_name(self) -> str:
        """The catalog name without a run-scope prefix (``bt.x.md.ticks`` -> ``md.ticks``)."""
        return self.catalog_name or self.name

    def broker_config(self) -> dict[str, str]:
        return {"retention.ms": str(self.retention_ms), "cleanup.policy": self.cleanup_policy}


class TopicCatalog(Mapping[str, TopicSpec]):
    """Topic specs by catalog name; ``scoped(prefix)`` gives the run-scoped copy."""

    def __init__(self, specs: list[TopicSpec], prefix: str = "") -> None:
        self._by_base = {s.base_name: s for s in specs}
        self.prefix = prefix

    def __getitem__(self, base_name: str) -> TopicSpec:
        try:
            return self._by_base[base_name]
        except KeyError:
            msg = f"topic {base_name!r} is not in the catalog (known: {', '.join(sorted(self._by_base))})"
            raise KeyError(msg) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_base)

    def __len__(self) -> int:
        return len(self._by_base)

    def name(self, base_name: str) -> str:
        """The broker topic name for a catalog entry."""
        return self[base_name].name

    def scoped(self, prefix: str) -> TopicCatalog:
        """A copy whose topic names start with ``prefix.`` (e.g. ``bt.<run_id>``)."""
        if not _NAME.match(prefix):
            msg = f"invalid topic prefix {prefix!r}"
            raise CatalogError(msg)
        specs = [
            msgspec.structs.replace(s, name=f"{prefix}.{s.base_name}", catalog_name=s.base_name)
            for s in self._by_base.values()
        ]
        return TopicCatalog(specs, prefix=prefix)

    def by_topic_name(self, topic: str) -> TopicSpec:
        for spec in self._by_base.values():
            if spec.name == topic:
                return spec
        msg = f"topic {topic!r} is not in the catalog"
        raise KeyError(msg)


def parse_catalog(text: str, source: str = "<string>") -> TopicCatalog:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        msg = f"{source}: not valid YAML: {exc}"
        raise CatalogError(msg) from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("topics"), list):
        msg = f"{source}: expected a mapping with a 'topics' list"
        raise CatalogError(msg)
    specs: list[TopicSpec] = []
    for i, entry in enumerate(doc["topics"]):
        try:
            spec = msgspec.convert(entry, TopicSpec)
        except msgspec.ValidationError as exc:
            msg = f"{source}: topics[{i}]: {exc}"
            raise CatalogError(msg) from exc
        problems = []
        if not _NAME.match(spec.name):
            problems.append(f"invalid name {spec.name!r}")
        if spec.partitions < 1:
            problems.append(f"partitions must be >= 1, got {spec.partitions}")
        if spec.value not in VALUE_TYPES:
            problems.append(f"unknown value type {spec.value!r} (known: {', '.join(sorted(VALUE_TYPES))})")
        if spec.cleanup_policy not in {"delete", "compact", "compact,delete"}:
            problems.append(f"cleanup_policy must be delete or compact, got {spec.cleanup_policy!r}")
        if spec.retention_ms < -1 or spec.retention_ms == 0:
            problems.append(f"retention_ms must be positive or -1, got {spec.retention_ms}")
        if problems:
            msg = f"{source}: topics[{i}] ({spec.name}): {'; '.join(problems)}"
            raise CatalogError(msg)
        specs.append(spec)
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        msg = f"{source}: duplicate topic names: {', '.join(dupes)}"
        raise CatalogError(msg)
    return TopicCatalog(specs)


def load_catalog(path: Path = DEFAULT_CATALOG) -> TopicCatalog:
    return parse_catalog(path.read_text(encoding="utf-8"), source=str(path))
