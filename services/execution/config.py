"""Settings of the execution service (env prefix ``QUANTMESH_EXECUTION_``)."""

from __future__ import annotations

import os
from decimal import Decimal
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from quantmesh.runtime.config import ServiceSettings, quantmesh_home
from quantmesh.services.execution.clock import ClockMode

ENV_PREFIX = "QUANTMESH_EXECUTION_"


def _default_folder() -> Path:
    return quantmesh_home() / "execution"


class ExecutionSettings(ServiceSettings):
    """Execution settings.

    Attributes
    ----------
    marketdata_address:
        ``host:port`` of market data: its ticks drive fills, stops and targets.
    folder:
        Where the order store (unless ``database_url`` is set) and the paper broker's
        journal live.
    database_url:
        The order store's database, e.g. ``postgresql://…``; empty keeps it in
        ``folder``. Defaults to ``QUANTMESH_DATABASE_URL``.
    account_id, currency, starting_balance:
        The paper account.
    tick_speed:
        Replay speed asked of market data: 0 as fast as possible, 1.0 real time.
    clock:
        ``free`` lets ticks act as they arrive (live trading); ``pipeline`` holds them
        at the market time risk grants, so a replay fills the same at any speed (see
        :mod:`quantmesh.services.execution.clock`). ``quantmesh up`` uses ``pipeline``.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    port: int = Field(default=8007, ge=0, le=65535)  # the seed's trading-engine port
    marketdata_address: str = "127.0.0.1:8001"
    folder: Path = Field(default_factory=_default_folder)
    database_url: str = Field(default_factory=lambda: os.environ.get("QUANTMESH_DATABASE_URL", ""))
    account_id: str = Field(default="paper", min_length=1, max_length=64)
    currency: str = Field(default="USD", pattern="^[A-Z]{3}$")
    starting_balance: Decimal = Field(default=Decimal("10000"), gt=0)
    tick_batch_size: int = Field(default=1_000, ge=1, le=100_000)
    tick_speed: float = Field(default=0.0, ge=0.0)
    clock: ClockMode = ClockMode.FREE
