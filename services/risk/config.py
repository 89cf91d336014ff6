"""Settings of the risk service (env prefix ``QUANTMESH_RISK_``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from quantmesh.observability.audit.decisions import AuditSetting, audit_setting
from quantmesh.runtime.config import ServiceSettings, quantmesh_home
from quantmesh.services.marketdata.sources import EURGBP, EURUSD, GBPUSD, USDJPY, Symbol
from quantmesh.storage.graph import shared_url as shared_graph_url

ENV_PREFIX = "QUANTMESH_RISK_"
GRAPH_URL_SETTING = f"{ENV_PREFIX}GRAPH_URL"

# What risk knows about the symbols it sizes: the same table the paper broker trades, so
# a volume risk approves is on execution's volume step.
KNOWN_SYMBOLS: dict[str, Symbol] = {s.name: s for s in (EURUSD, GBPUSD, USDJPY, EURGBP)}


def _default_folder() -> Path:
    return quantmesh_home() / "risk"


class RiskSettings(ServiceSettings):
    """Risk settings.

    Attributes
    ----------
    folder:
        Where the risk store lives (limits, kill switches, the driver's cursor). An
        engaged kill switch survives a restart because it is kept here.
    decision_address:
        ``host:port`` of the decision service whose signals the driver trades.
    execution_address:
        ``host:port`` of the execution service: account state in, orders out.
    account_id:
        The trading account the driver trades signals for.
    symbols:
        Symbols whose signals the driver subscribes to (comma-separated in the
        environment, e.g. ``QUANTMESH_RISK_SYMBOLS=EURUSD,GBPUSD``).
    deviation_points:
        Largest slippage of the driver's market orders, in points; 0 means
        execution's account default.
    drive:
        Run the driver: the background job that turns approved signals into orders.
        Without it the service only answers queries (EvaluateSignal is a dry run).
    audit:
        Where the driver appends its decisions to the audit log (the signal, the risk
        decision with every verdict, each order); empty turns the log off. Default
        ``$QUANTMESH_HOME/audit/audit.sqlite3``, shared with the other services.
    graph_url:
        The graph store (:mod:`quantmesh.storage.graph`): risk reads the currency graph's
        edges from it for exposure, adds the edges of its own symbols (keeping any
        correlation already stored) and records every evaluated decision's provenance.
        Default ``QUANTMESH_GRAPH_URL`` when set, else ``memory://`` (in the process,
        nothing shared or kept). Opened at start: a malformed or unreachable URL stops
        the service with a message naming ``QUANTMESH_RISK_GRAPH_URL``.
    graph_refresh_seconds:
        How often the currency graph's edges are read again (in the background; a
        signal never waits for the graph store), so correlations another service
        writes reach risk's exposure.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    port: int = Field(default=8004, ge=0, le=65535)  # the seed's risk-management port
    folder: Path = Field(default_factory=_default_folder)
    decision_address: str = "127.0.0.1:8003"
    execution_address: str = "127.0.0.1:8007"
    account_id: str = Field(default="paper", min_length=1, max_length=64)
    # NoDecode: the environment gives a plain comma-separated list, not JSON.
    symbols: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["EURUSD"])
    deviation_points: int = Field(default=10, ge=0, le=100_000)
    drive: bool = True
    audit: AuditSetting = audit_setting()
    graph_url: str = Field(default_factory=shared_graph_url)
    graph_refresh_seconds: float = Field(default=60.0, gt=0.0, le=86_400.0)

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",")]
        return value

    @field_validator("symbols")
    @classmethod
    def _known_symbols(cls, value: list[str]) -> list[str]:
        if not value or any(not name for name in value):
            raise ValueError("give at least one symbol, with no empty names")
        unknown = sorted(set(value) - set(KNOWN_SYMBOLS))
        if unknown:
            raise ValueError(
                f"unknown symbols {', '.join(unknown)}; risk knows {', '.join(KNOWN_SYMBOLS)}"
            )
        return sorted(set(value))
