"""Shared pieces of the benchmarks: service processes and percentiles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from quantmesh.mesh.launcher import ServiceProcess, free_port, service_process

__all__ = ["ServiceProcess", "free_port", "percentiles_us", "service_process"]


def percentiles_us(samples_ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """p50, p90, p99 and max of latency samples, in microseconds."""
    values = np.asarray(samples_ns, dtype=np.float64) / 1_000.0
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50_us": round(float(p50), 1),
        "p90_us": round(float(p90), 1),
        "p99_us": round(float(p99), 1),
        "max_us": round(float(values.max()), 1),
        "samples": int(values.size),
    }
