"""Settings of the recorder service (env prefix ``QUANTMESH_RECORDER_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from quantmesh.runtime.config import ServiceSettings
from quantmesh.storage.timeseries import default_url

ENV_PREFIX = "QUANTMESH_RECORDER_"
TIMESERIES_URL_SETTING = f"{ENV_PREFIX}TIMESERIES_URL"


class RecorderSettings(ServiceSettings):
    """Recorder settings.

    Attributes
    ----------
    marketdata_address:
        ``host:port`` of market data, whose ticks are recorded.
    timeseries_url:
        The timeseries store (:mod:`quantmesh.storage.timeseries`):
        ``chdb:///var/timeseries`` (embedded, the default: ``$QUANTMESH_HOME/timeseries``)
        or ``clickhouse://user:password@host:8123/db``.
    symbols:
        Symbols to record; empty records every symbol market data serves. The ticks of
        one set of symbols are one stream, numbered by seq, whose stored seqs are its
        cursor: change the set, and a new stream is recorded from its start.
    batch_ticks:
        A write is made once this many ticks are buffered...
    flush_seconds:
        ...or once the oldest buffered tick has waited this long, whichever comes first.
    subscribe_batch_size:
        Ticks per batch asked of market data.
    retry_max_seconds:
        Longest wait between two attempts to write while the store is down; the waits
        double from 0.2 s up to it.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    port: int = Field(default=8009, ge=0, le=65535)
    marketdata_address: str = "127.0.0.1:8001"
    timeseries_url: str = Field(default_factory=default_url)
    symbols: tuple[str, ...] = ()
    batch_ticks: int = Field(default=50_000, ge=1, le=1_000_000)
    flush_seconds: float = Field(default=1.0, gt=0.0, le=3600.0)
    subscribe_batch_size: int = Field(default=5_000, ge=1, le=100_000)
    retry_max_seconds: float = Field(default=10.0, ge=0.2, le=600.0)
