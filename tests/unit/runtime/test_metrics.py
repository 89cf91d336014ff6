"""Metrics served over HTTP and read back by the live view of ``quantmesh up``."""

from __future__ import annotations

from quantmesh.cli.dashboard import quantile, scrape, total
from quantmesh.mesh.launcher import free_port
from quantmesh.runtime.metrics import SIGNALS, STAGE_SECONDS, serve_metrics


def test_the_view_reads_counters_and_percentiles_from_a_served_endpoint() -> None:
    port = serve_metrics("127.0.0.1", free_port())
    before = scrape(f"http://127.0.0.1:{port}/metrics")
    SIGNALS.labels("BUY").inc(3)
    for _ in range(99):
        STAGE_SECONDS.labels("test-stage").observe(0.0004)  # in the 250-500 µs bucket
    STAGE_SECONDS.labels("test-stage").observe(0.2)  # one slow batch: the 100-250 ms bucket
    after = scrape(f"http://127.0.0.1:{port}/metrics")
    bought = total(after, "quantmesh_signals_total", action="BUY")
    assert bought - total(before, "quantmesh_signals_total", action="BUY") == 3
    p50, p99 = quantile(after, "test-stage", 0.5), quantile(after, "test-stage", 0.995)
    assert p50 is not None
    assert 250e-6 < p50 <= 500e-6
    assert p99 is not None
    assert 0.1 < p99 <= 0.25
    assert quantile(after, "no-such-stage", 0.5) is None


def test_an_unreachable_service_reads_as_no_samples() -> None:
    assert scrape(f"http://127.0.0.1:{free_port()}/metrics", timeout=0.2) == {}
