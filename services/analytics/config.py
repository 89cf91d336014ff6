"""Settings of the analytics service (env prefix ``QUANTMESH_ANALYTICS_``)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from quantmesh.observability.audit.decisions import AuditSetting, audit_setting
from quantmesh.runtime.config import ServiceSettings, quantmesh_home
from quantmesh.storage.graph import shared_url as shared_graph_url

ENV_PREFIX = "QUANTMESH_ANALYTICS_"
GRAPH_URL_SETTING = f"{ENV_PREFIX}GRAPH_URL"

# Every symbol quantmesh's sources define: the paper broker trades them all, and their
# marks also convert profit in other quote currencies (JPY, GBP) into the account's.
DEFAULT_MARK_SYMBOLS = ("EURGBP", "EURUSD", "GBPUSD", "USDJPY")


def _default_folder() -> Path:
    return quantmesh_home() / "analytics"


def _default_graph_url() -> str:
    # No embedded default: fills only complete provenance risk wrote to a shared store.
    return shared_graph_url(default="")


class AnalyticsSettings(ServiceSettings):
    """Analytics settings.

    Attributes
    ----------
    execution_address:
        ``host:port`` of execution: its execution report stream carries every fill.
    marketdata_address:
        ``host:port`` of market data: its ticks, down-sampled to hourly marks, value
        open positions.
    folder:
        Where the analytics store (fills, marks and stream cursors) lives.
    account_id, currency, starting_balance:
        The account analysed. They must match execution's settings: the balance before
        the first fill is not on the report stream, so it is configured on both sides.
    mark_symbols:
        Symbols whose ticks become marks; only those market data serves are read.
    tick_batch_size:
        Ticks per batch asked of market data; each batch is one store transaction.
    report_batch_size:
        Execution reports per batch asked of execution.
    audit:
        Where every execution report of a decision (acceptance, fills, rejections) is
        appended to the audit log, completing the story risk began; empty turns it off.
    graph_url:
        The graph store (:mod:`quantmesh.storage.graph`) where risk records each
        decision's provenance: analytics attaches every fill it reads to its decision's
        order there (:mod:`~quantmesh.services.analytics.graph`). Default
        ``QUANTMESH_GRAPH_URL`` when set, else empty: off, since there is no provenance
        to complete unless the store is shared with risk (a ``file://`` journal has one
        writer process, so it must not be risk's while risk runs). Opened at start: a
        malformed or unreachable URL stops the service with a message naming
        ``QUANTMESH_ANALYTICS_GRAPH_URL``.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    port: int = Field(default=8008, ge=0, le=65535)
    execution_address: str = "127.0.0.1:8007"
    marketdata_address: str = "127.0.0.1:8001"
    folder: Path = Field(default_factory=_default_folder)
    account_id: str = Field(default="paper", min_length=1, max_length=64)
    currency: str = Field(default="USD", pattern="^[A-Z]{3}$")
    starting_balance: Decimal = Field(default=Decimal("10000"), gt=0)
    mark_symbols: tuple[str, ...] = Field(default=DEFAULT_MARK_SYMBOLS, min_length=1)
    tick_batch_size: int = Field(default=5_000, ge=1, le=100_000)
    report_batch_size: int = Field(default=100, ge=1, le=10_000)
    audit: AuditSetting = audit_setting()
    graph_url: str = Field(default_factory=_default_graph_url)
