"""Doctest collection of a module compiled by ``make native``: pytest cannot collect the
doctests of a module Python imports from a C extension (the imported module is not the
file), so those are skipped here and run against the sources by tests/operators/test_native.py."""

from __future__ import annotations

from pathlib import Path


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    if collection_path.suffix == ".py" and any(collection_path.parent.glob(collection_path.stem + ".*.so")):
        return True
    return None
