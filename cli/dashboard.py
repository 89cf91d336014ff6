"""The live view of ``quantmesh up``: what every service's ``/metrics`` says, as one table.

Each service serves Prometheus metrics (:mod:`quantmesh.runtime.metrics`); the view
scrapes them twice a second, turns counters into rates and histograms into
percentiles, and renders a rich table. Nothing here talks gRPC: the view reads the same
numbers an operator's Prometheus would.
"""

from __future__ import annotations

import math
import time
import urllib.request
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families
from rich.table import Table

from quantmesh.mesh.launcher import ServiceProcess

STAGES = ("features", "inference", "decision", "risk", "execution")

# (metric name, labels) → value, summed over every service that reports it.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str, timeout: float = 1.0) -> Samples:
    """One service's metrics; empty if it does not answer (e.g. while restarting)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            text = response.read().decode()
    except OSError:
        return {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over the samples whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def quantile(samples: Samples, stage: str, q: float) -> float | None:
    """The ``q`` quantile of a stage's latency in seconds, interpolated within buckets."""
    buckets: list[tuple[float, float]] = []
    for (name, labels), value in samples.items():
        label = dict(labels)
        if name == "quantmesh_stage_seconds_bucket" and label.get("stage") == stage:
            buckets.append((float(label["le"]), value))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (bound - lower_bound) * share
        lower_bound, lower_count = bound, count
    return None


@dataclass
class Dashboard:
    """Scrapes the services and renders what they report."""

    services: Mapping[str, ServiceProcess]
    samples: Samples = field(default_factory=dict)
    _last_ticks: tuple[float, float] = (0.0, 0.0)
    ticks_per_second: float = 0.0
    notes: list[str] = field(default_factory=list)
    finished_at: float = 0.0  # time.monotonic() when risk and execution first reported done

    def refresh(self) -> Samples:
        """Scrape every service and update the tick rate."""
        merged: Samples = defaultdict(float)
        for process in self.services.values():
            if process.metrics_url:
                for key, value in scrape(process.metrics_url).items():
                    merged[key] += value
        self.samples = dict(merged)
        now, ticks = time.monotonic(), self.ticks
        then, before = self._last_ticks
        if then and now > then and ticks >= before:
            self.ticks_per_second = (ticks - before) / (now - then)
        self._last_ticks = (now, ticks)
        return self.samples

    @property
    def ticks(self) -> float:
        return total(self.samples, "quantmesh_ticks_total", service="execution")

    def finished(self, service: str) -> bool:
        return total(self.samples, "quantmesh_replay_finished", service=service) >= 1

    @property
    def replay_done(self) -> bool:
        """True once risk has traded every signal and execution played every tick."""
        done = self.finished("risk") and self.finished("execution")
        if done and not self.finished_at:
            self.finished_at = time.monotonic()
        return done

    @property
    def market_time(self) -> str:
        """Execution's market time as ``YYYY-MM-DD HH:MM``, or ``—`` before its first tick."""
        market_ms = total(self.samples, "quantmesh_market_time_ms", service="execution")
        return time.strftime("%Y-%m-%d %H:%M", time.gmtime(market_ms / 1000)) if market_ms else "—"

    def progress_line(self) -> str:
        """One line of progress, for logs and terminals without the live view."""
        s = self.samples
        return (
            f"market {self.market_time}  ticks {self.ticks:,.0f} ({self.ticks_per_second:,.0f}/s)  "
            f"orders {total(s, 'quantmesh_orders_total'):,.0f}  "
            f"fills {total(s, 'quantmesh_fills_total'):,.0f}  "
            f"equity {total(s, 'quantmesh_account_equity'):,.2f}"
        )

    def render(self) -> Table:
        s = self.samples
        table = Table(title="quantmesh up", title_justify="left", show_header=False, box=None)
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        table.add_row("market time", f"{self.market_time} UTC")
        table.add_row("ticks", f"{self.ticks:,.0f} executed, {self.ticks_per_second:,.0f}/s")
        actions = ("BUY", "SELL", "CLOSE")
        signals = ", ".join(
            f"{total(s, 'quantmesh_signals_total', action=a):,.0f} {a}" for a in actions
        )
        table.add_row("signals", signals)
        approved = total(s, "quantmesh_risk_decisions_total", outcome="approved")
        rejected = total(s, "quantmesh_risk_decisions_total", outcome="rejected")
        table.add_row("risk", f"{approved:,.0f} approved, {rejected:,.0f} rejected")
        orders = total(s, "quantmesh_orders_total")
        fills = total(s, "quantmesh_fills_total")
        table.add_row("orders", f"{orders:,.0f} placed, {fills:,.0f} fills")
        equity = total(s, "quantmesh_account_equity")
        table.add_row("equity", f"{equity:,.2f}" if equity else "—")
        latencies = [f"{stage} {p50}/{p99}" for stage, p50, p99 in latency_rows(s)]
        table.add_row("stage ms p50/p99", "  ".join(latencies) or "—")
        recorded = [
            f"{total(s, 'quantmesh_recorded_rows_total', kind=kind):,.0f} {kind}"
            for kind in ("ticks", "predictions")
        ]
        table.add_row("recorded", ", ".join(recorded))
        processes = []
        for name, process in self.services.items():
            state = "[red]down[/red]" if process.exited else "[green]up[/green]"
            again = f" ↻{process.restarts}" if process.restarts else ""
            processes.append(f"{name} {state}{again}")
        table.add_row("services", "  ".join(processes))
        for note in self.notes[-3:]:
            table.add_row("", f"[yellow]{note}[/yellow]")
        return table


def latency_rows(samples: Samples, stages: Sequence[str] = STAGES) -> list[tuple[str, str, str]]:
    """``(stage, p50 ms, p99 ms)`` of every stage that reported a latency."""
    rows = []
    for stage in stages:
        p50, p99 = quantile(samples, stage, 0.5), quantile(samples, stage, 0.99)
        if p50 is not None and p99 is not None:
            rows.append((stage, f"{p50 * 1e3:.3f}", f"{p99 * 1e3:.3f}"))
    return rows
