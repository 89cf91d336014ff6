"""Settings of the decision service (env prefix ``QUANTMESH_DECISION_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from quantmesh.runtime.config import ServiceSettings, quantmesh_home
from quantmesh.storage.vectors import DEFAULT_URL as DEFAULT_VECTORS_URL

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
    similar_states:
        k: how many similar past market states to look up for each row and summarise in
        the decision's reason (``quantmesh.services.decision.similar``). 0, the default,
        turns the lookup off. Either way the actions are the same: it adds to the reason
        only.
    similar_horizon_ms:
        How far ahead a past state's outcome looks ("rose over 1h").
    vectors_url:
        The vectors store of the market states (``quantmesh.storage.vectors``):
        ``memory://`` (the default, rebuilt from the stream), ``file:///var/states.npz``
        or ``weaviate://:KEY@host:8080``. Read only when ``similar_states`` > 0.
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
    similar_states: int = Field(default=0, ge=0, le=1000)
    similar_horizon_ms: int = Field(default=3_600_000, gt=0, le=30 * 86_400_000)
    vectors_url: str = DEFAULT_VECTORS_URL
