"""Settings of the features service (env prefix ``QUANTMESH_FEATURES_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from quantmesh.runtime.config import ServiceSettings

ENV_PREFIX = "QUANTMESH_FEATURES_"


class FeaturesSettings(ServiceSettings):
    """Features settings.

    Attributes
    ----------
    marketdata_address:
        ``host:port`` of the market data service the features are computed from.
    tick_batch_size:
        Ticks per batch asked of market data; larger batches vectorize better,
        smaller ones cut the latency of a bar close.
    tick_window:
        Batches of tick credit kept outstanding upstream.
    tick_speed:
        Replay speed asked of market data: 0 as fast as possible, 1.0 real time,
        3600 one market hour per second (live-like runs and latency benchmarks).
    cache_url:
        Cache where each symbol's latest feature vector is written (the last row per
        symbol of every batch sent, never an older one over a newer):
        ``redis://host:6379/0`` (Redis or DragonflyDB) or ``memory://``. Empty (the
        default) writes nothing.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    port: int = Field(default=8002, ge=0, le=65535)
    marketdata_address: str = "127.0.0.1:8001"
    tick_batch_size: int = Field(default=2_000, ge=1, le=100_000)
    tick_window: int = Field(default=16, ge=1, le=1_024)
    tick_speed: float = Field(default=0.0, ge=0.0)
    cache_url: str = ""
