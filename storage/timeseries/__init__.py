"""The timeseries port: ticks, bars, predictions and model performance over time.

chDB (ClickHouse embedded, in a folder) by default; a ClickHouse server when the URL
names one (``clickhouse://user:password@host:8123/db``, ``clickhouses://…`` for TLS).
Both run the same SQL (:mod:`.sql`). See :mod:`.port` for the interface.
"""

from __future__ import annotations

import os

from quantmesh.runtime.config import quantmesh_home
from quantmesh.storage.resilience import Backoff
from quantmesh.storage.timeseries.port import (
    AccuracyRow,
    Bars,
    PredictedClass,
    PredictionRows,
    SeqGapError,
    StoredPredictions,
    StoredTicks,
    TickRows,
    TimeseriesPort,
)
from quantmesh.storage.urls import parse_store_url

__all__ = [
    "SCHEMES",
    "SETTING",
    "AccuracyRow",
    "Bars",
    "PredictedClass",
    "PredictionRows",
    "SeqGapError",
    "StoredPredictions",
    "StoredTicks",
    "TickRows",
    "TimeseriesPort",
    "default_url",
    "open_timeseries",
    "shared_url",
]

SETTING = "QUANTMESH_TIMESERIES_URL"  # shared by every service; a service's own setting wins

SCHEMES = {
    "chdb": "chdb:///var/timeseries",
    "clickhouse": "clickhouse://user:password@host:8123/quantmesh",
    "clickhouses": "clickhouses://user:password@host:8443/quantmesh",
}


def default_url() -> str:
    """``chdb:///<quantmesh home>/timeseries``, for the home in force when called."""
    home = quantmesh_home().as_posix().rstrip("/")
    return f"chdb:///{home}/timeseries"


def shared_url() -> str:
    """``QUANTMESH_TIMESERIES_URL`` when set, else :func:`default_url`: the default of a
    service's own timeseries setting, so one variable points every service at one store."""
    return os.environ.get(SETTING) or default_url()


def open_timeseries(
    url: str | None = None,
    setting: str = SETTING,
    *,
    backoff: Backoff | None = None,
) -> TimeseriesPort:
    """The store ``url`` names (:func:`default_url` when None or empty).

    A malformed URL or an unknown scheme raises StoreConfigError, and a server that
    cannot be reached (or a chDB folder another process holds) StoreUnavailableError;
    both name ``setting``. ``backoff`` governs a server's retries (at start-up too).
    """
    parsed = parse_store_url(setting, url or default_url(), SCHEMES)
    # Imported here: each adapter loads its engine only when it is used.
    if parsed.scheme == "chdb":
        from quantmesh.storage.timeseries.chdb import ChdbTimeseries

        return ChdbTimeseries(parsed.file, url=parsed.raw, setting=setting)
    from quantmesh.storage.timeseries.clickhouse import ClickHouseTimeseries

    if backoff is None:
        return ClickHouseTimeseries.connect(parsed)
    return ClickHouseTimeseries.connect(parsed, backoff=backoff)
