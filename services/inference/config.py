"""Settings of the inference service (env prefix ``QUANTMESH_INFERENCE_``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from quantmesh.runtime.config import ServiceSettings, quantmesh_home
from quantmesh.services.inference.cache import DEFAULT_SHARED_TTL_S

ENV_PREFIX = "QUANTMESH_INFERENCE_"


def default_registry_root() -> Path:
    """``$QUANTMESH_HOME/registry``, with ``QUANTMESH_HOME`` defaulting to ``./var``."""
    return quantmesh_home() / "registry"


class InferenceSettings(ServiceSettings):
    """Inference settings.

    Attributes
    ----------
    registry_root:
        Directory of the model registry the models are loaded from (shared with the
        trainer): by default ``$QUANTMESH_HOME/registry``, ``QUANTMESH_HOME`` being
        ``./var`` unless set.
    model_refs:
        Models served at start-up, comma-separated registry references: ``name``
        (its champion), ``name@alias`` (follows the alias) or ``name:version``
        (pinned). A reference the registry cannot resolve is logged, not fatal: the
        server starts not ready, and SwitchModel can load a model later.
    features_address:
        ``host:port`` of the features service that the prediction stream reads.
    cache_size:
        Predictions kept in the in-process LRU cache; 0 disables it.
    cache_url:
        A cache shared by every inference replica, behind the in-process one:
        ``redis://host:6379/0`` (Redis or DragonflyDB; ``rediss://`` for TLS). Empty (the
        default) shares nothing. An unreachable store fails the start; one that goes down
        later is skipped (predictions are computed) until it is back.
    cache_ttl_seconds:
        How long the shared cache keeps a prediction.
    alias_poll_seconds:
        How often aliases followed are re-read from the registry, so that a champion
        moved by the trainer or another process is served without a restart; 0 never.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    port: int = Field(default=8006, ge=0, le=65535)  # the seed's ml-processing port
    registry_root: Path = Field(default_factory=default_registry_root)
    model_refs: str = "eurusd-h1-direction@champion"
    features_address: str = "127.0.0.1:8002"
    cache_size: int = Field(default=100_000, ge=0, le=10_000_000)
    cache_url: str = ""
    cache_ttl_seconds: float = Field(default=DEFAULT_SHARED_TTL_S, gt=0.0, le=30 * 86_400.0)
    alias_poll_seconds: float = Field(default=5.0, ge=0.0, le=3_600.0)

    @field_validator("model_refs")
    @classmethod
    def _refs_not_blank(cls, value: str) -> str:
        if any(not ref.strip() for ref in value.split(",")) and value.strip():
            raise ValueError("empty reference in the comma-separated list")
        return value

    @property
    def refs(self) -> list[str]:
        """The references of ``model_refs``, in order."""
        return [ref.strip() for ref in self.model_refs.split(",") if ref.strip()]
