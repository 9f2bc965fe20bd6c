"""Fixtures the unit tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tradebus import tracing


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Every span the test makes, in memory (the exporter stands in for the configured one)."""
    exporter = InMemorySpanExporter()
    monkeypatch.setattr(tracing, "_exporter", lambda settings: exporter)
    tracing.shutdown()
    yield exporter
    tracing.shutdown()
