"""Settings of the decision service (env prefix ``QUANTMESH_DECISION_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from quantmesh.runtime.config import ServiceSettings, quantmesh_home

ENV_PREFIX = "QUANTMESH_DECISION_"


def _default_registry() -> Path:
    return quantmesh_home() / "registry"


class DecisionSettings(ServiceSettings):
    """Decision settings.

    Attributes
    ----------
    marketdata_address, features_address, inference_address:
        ``host:port`` of the upstream services.
    model_name:
        Registry name of the model whose served version drives decisions.
    registry_root:
        Model registry folder, read for each model's data range (staleness rule).
    min_confidence, stop_atr_multiple, reward_risk:
        Policy thresholds (see ``quantmesh.services.decision.policy``).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    port: int = Field(default=8003, ge=0, le=65535)  # the seed's ai-orchestration port
    marketdata_address: str = "127.0.0.1:8001"
    features_address: str = "127.0.0.1:8002"
    inference_address: str = "127.0.0.1:8006"
    model_name: str = "eurusd-h1-direction"
    registry_root: Path = Field(default_factory=_default_registry)
    min_confidence: float = Field(default=0.1, ge=0.0, le=1.0)
    stop_atr_multiple: float = Field(default=1.5, gt=0.0, le=20.0)
    reward_risk: float = Field(default=2.0, gt=0.0, le=20.0)
