"""Benchmarks measure the flows as a flow process runs them: with its collector settings."""

from __future__ import annotations

import pytest

from flows.runtime import tune_gc


@pytest.fixture(scope="session", autouse=True)
def _flow_process_gc() -> None:
    tune_gc()
