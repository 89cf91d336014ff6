"""Prometheus metrics of every quantmesh service, in one place.

Each service process serves its metrics on ``/metrics`` when its ``metrics_port`` is
set (``quantmesh up`` sets one per service and reads them for its live view). The
metrics are process-wide, labelled by service or stage, so services sharing a process
(the tests, the benchmarks) add up instead of colliding.

Stage latency is the time a stage spends computing one batch (features, inference,
decision) or one item (a risk evaluation, an order submission), not the time it waits
for its upstream: it answers "which stage is slow", while the benchmarks answer "how
long does a tick take to become an order".

The backlog gauges add up the same way: ``quantmesh_stream_lag{stream=…}`` is the sum of
the lags of the process's subscribers of that stream, ``quantmesh_audit_queue_depth`` the
sum of its audit writers' depths.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

# From 50 µs (a cached prediction) to 1 s (a stalled store), roughly ×2 apart.
STAGE_BUCKETS = (
    50e-6,
    100e-6,
    250e-6,
    500e-6,
    1e-3,
    2e-3,
    5e-3,
    10e-3,
    25e-3,
    50e-3,
    100e-3,
    250e-3,
    1.0,
)

TICKS = Counter("quantmesh_ticks", "Ticks processed, by consuming service.", ["service"])
STAGE_SECONDS = Histogram(
    "quantmesh_stage_seconds",
    "Compute time of one batch or item in a pipeline stage.",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
SIGNALS = Counter("quantmesh_signals", "Signals emitted by decision, by action.", ["action"])
RISK_DECISIONS = Counter(
    "quantmesh_risk_decisions", "Signals evaluated by risk, by outcome.", ["outcome"]
)
RISK_REJECTIONS = Counter(
    "quantmesh_risk_rejections", "Failed rule verdicts of rejected signals, by rule.", ["rule"]
)
ORDERS = Counter("quantmesh_orders", "Orders recorded by execution.", ["account"])
EXECUTION_REPORTS = Counter(
    "quantmesh_execution_reports", "Execution reports, by order state.", ["state"]
)
FILLS = Counter("quantmesh_fills", "Fills, by symbol.", ["symbol"])
EQUITY = Gauge("quantmesh_account_equity", "Account equity at the last quotes.", ["account"])
MARKET_TIME = Gauge(
    "quantmesh_market_time_ms", "Market time a service has reached, UTC epoch ms.", ["service"]
)
REPLAY_FINISHED = Gauge(
    "quantmesh_replay_finished", "1 once a service has consumed a whole finite replay.", ["service"]
)
STREAM_LAG = Gauge(
    "quantmesh_stream_lag",
    "Items a Subscribe stream sent and its consumers have not acked, summed over subscribers.",
    ["stream"],
)
RECORDED_ROWS = Counter(
    "quantmesh_recorded_rows",
    "Rows the recorder has stored in the timeseries store, by kind (ticks, predictions).",
    ["kind"],
)
AUDIT_QUEUE_DEPTH = Gauge(
    "quantmesh_audit_queue_depth", "Audit records queued or being written, not yet committed."
)


@contextmanager
def timed(stage: str) -> Iterator[None]:
    """Observe the block's wall time in ``quantmesh_stage_seconds{stage=…}``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        STAGE_SECONDS.labels(stage).observe(time.perf_counter() - started)


def serve_metrics(host: str, port: int) -> int:
    """Serve ``/metrics`` over HTTP on ``host:port`` (0 picks a port); return the port."""
    server, _thread = start_http_server(port, addr=host)
    bound: int = server.server_port
    return bound
