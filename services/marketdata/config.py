"""Settings of the market data service (env prefix ``QUANTMESH_MARKETDATA_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from quantmesh.runtime.config import ServiceSettings

ENV_PREFIX = "QUANTMESH_MARKETDATA_"


class MarketDataSettings(ServiceSettings):
    """Market data settings.

    Attributes
    ----------
    source:
        ``replay`` streams ticks derived from the shipped EUR/USD H1 bars of 2017;
        ``synthetic`` streams correlated random walks for several symbols.
    seed:
        Seed of the tick generator: the same seed gives the same ticks, always.
    mean_ticks_per_bar:
        Average ticks generated per H1 bar by the replay source.
    synthetic_correlation:
        Correlation of the synthetic symbols' log-returns, the same for every pair.
    synthetic_hours:
        Market hours of ticks the synthetic source produces before it ends.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    port: int = Field(default=8001, ge=0, le=65535)  # the seed's data-bridge port
    source: Literal["replay", "synthetic"] = "replay"
    seed: int = Field(default=7, ge=0)
    mean_ticks_per_bar: int = Field(default=100, ge=4, le=10_000)
    synthetic_correlation: float = Field(default=0.6, gt=-1.0, lt=1.0)
    synthetic_hours: float = Field(default=168.0, gt=0.0, le=24.0 * 365)
