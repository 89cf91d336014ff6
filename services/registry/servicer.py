"""gRPC adapter of the model registry: a thin layer over :class:`ModelRegistry`.

It is served by the inference process (the seed's ml-processing service held the
registry too). Params of a version carry the contract fields the core has no column for:
``symbol``, ``horizon_bars``, ``training_job_id`` and ``feature_schema_version``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import grpc

from quantmesh.features.v1 import features_pb2
from quantmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from quantmesh.runtime.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    abort_on_domain_error,
)
from quantmesh.services.registry.core import ModelRegistry, ModelVersion

SERVICE_NAME = registry_pb2.DESCRIPTOR.services_by_name["ModelRegistryService"].full_name
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1_000
_SHA256 = re.compile(r"[0-9a-f]{64}")

Context = grpc.aio.ServicerContext[Any, Any]
# Called after an alias moved or was deleted, e.g. so inference serves the new champion.
AliasHook = Callable[[], Awaitable[None]]
# Whether a running server follows (name, alias): such a champion must not be deleted.
FollowedCheck = Callable[[str, str], bool]


def version_to_proto(mv: ModelVersion) -> registry_pb2.ModelVersion:
    """The contract's ModelVersion of a registry record."""
    params = mv.params
    return registry_pb2.ModelVersion(
        name=mv.name,
        version=str(mv.version),
        artifact_uri=mv.artifact_path.resolve().as_uri(),
        sha256=mv.sha256,
        metrics=dict(mv.metrics),
        data_from_time_ms=mv.data_from_ms,
        data_to_time_ms=mv.data_to_ms,
        feature_schema=features_pb2.FeatureSchema(
            version=params.get("feature_schema_version", ""),
            digest=hashlib.sha256("\n".join(mv.feature_names).encode()).digest(),
            features=[features_pb2.FeatureSpec(name=name) for name in mv.feature_names],
        ),
        symbol=params.get("symbol", ""),
        horizon_bars=int(params.get("horizon_bars", "0") or 0),
        training_job_id=params.get("training_job_id", ""),
        description=mv.description,
        aliases=list(mv.aliases),
        created_time_ms=mv.created_ms,
    )


def _version_number(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise InvalidArgument(f"version must be a positive integer, e.g. 3, got {text!r}")
    return int(text)


def _read_artifact(uri: str, sha256: str) -> bytes:
    if not uri:
        raise InvalidArgument("artifact_uri is required, e.g. file:///var/models/model.onnx")
    if not _SHA256.fullmatch(sha256):
        raise InvalidArgument(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        raise InvalidArgument(f"only file:// artifact URIs can be registered here, got {uri!r}")
    path = Path(unquote(parsed.path))
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FailedPrecondition(f"cannot read the artifact at {uri}: {error.strerror}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != sha256:
        raise FailedPrecondition(
            f"the artifact at {uri} has SHA-256 {actual}, not the {sha256} given"
        )
    return data


class ModelRegistryServicer(registry_pb2_grpc.ModelRegistryServiceServicer):
    """Serves a :class:`ModelRegistry` over gRPC.

    Parameters
    ----------
    registry:
        The registry.
    on_alias_change:
        Awaited after SetAlias and DeleteAlias succeed.
    is_followed:
        Tells whether ``(name, alias)`` is followed by a running server; deleting a
        followed ``champion`` is refused with FAILED_PRECONDITION.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        on_alias_change: AliasHook | None = None,
        is_followed: FollowedCheck | None = None,
    ) -> None:
        self._registry = registry
        self._on_alias_change = on_alias_change
        self._is_followed = is_followed

    async def RegisterModel(
        self, request: registry_pb2.RegisterModelRequest, context: Context
    ) -> registry_pb2.RegisterModelResponse:
        async with abort_on_domain_error(context):
            model = request.model
            if model.encryption_key_id:
                raise InvalidArgument("encrypted artifacts are not supported yet")
            data = _read_artifact(model.artifact_uri, model.sha256)
            params = {
                key: value
                for key, value in {
                    "symbol": model.symbol,
                    "horizon_bars": str(model.horizon_bars) if model.horizon_bars else "",
                    "training_job_id": model.training_job_id,
                    "feature_schema_version": model.feature_schema.version,
                }.items()
                if value
            }
            mv, existing = self._registry.register_or_get(
                model.name,
                data,
                feature_names=[spec.name for spec in model.feature_schema.features],
                metrics=dict(model.metrics),
                data_from_ms=model.data_from_time_ms,
                data_to_ms=model.data_to_time_ms,
                description=model.description,
                params=params,
            )
        return registry_pb2.RegisterModelResponse(model=version_to_proto(mv), existing=existing)

    async def GetModel(
        self, request: registry_pb2.GetModelRequest, context: Context
    ) -> registry_pb2.GetModelResponse:
        async with abort_on_domain_error(context):
            selector = request.WhichOneof("selector")
            if selector == "version":
                mv = self._registry.get(request.name, version=_version_number(request.version))
            else:
                mv = self._registry.get(request.name, alias=request.alias or "champion")
        return registry_pb2.GetModelResponse(model=version_to_proto(mv))

    async def ListModelVersions(
        self, request: registry_pb2.ListModelVersionsRequest, context: Context
    ) -> registry_pb2.ListModelVersionsResponse:
        async with abort_on_domain_error(context):
            size = request.page_size or DEFAULT_PAGE_SIZE
            if size > MAX_PAGE_SIZE:
                raise InvalidArgument(f"page_size must be at most {MAX_PAGE_SIZE}, got {size}")
            token = request.page_token
            if token and not token.isdigit():
                raise InvalidArgument(f"malformed page_token {token!r}; pass next_page_token")
            start = int(token or 0)
            newest_first = self._registry.list_versions(request.name)[::-1]
            page = newest_first[start : start + size]
            more = start + size < len(newest_first)
        return registry_pb2.ListModelVersionsResponse(
            versions=[version_to_proto(mv) for mv in page],
            next_page_token=str(start + size) if more else "",
        )

    async def SetAlias(
        self, request: registry_pb2.SetAliasRequest, context: Context
    ) -> registry_pb2.SetAliasResponse:
        async with abort_on_domain_error(context):
            version = _version_number(request.version)
            previous = self._previous(request.name, request.alias)
            mv = self._registry.set_alias(request.name, request.alias, version)
            if self._on_alias_change is not None:
                await self._on_alias_change()
        return registry_pb2.SetAliasResponse(model=version_to_proto(mv), previous_version=previous)

    async def DeleteAlias(
        self, request: registry_pb2.DeleteAliasRequest, context: Context
    ) -> registry_pb2.DeleteAliasResponse:
        async with abort_on_domain_error(context):
            if (
                request.alias == "champion"
                and self._is_followed is not None
                and self._is_followed(request.name, request.alias)
            ):
                raise FailedPrecondition(
                    f"{request.name}@champion is being served; switch the server to another "
                    "alias or version before deleting it"
                )
            previous = self._registry.get(request.name, alias=request.alias)
            self._registry.delete_alias(request.name, request.alias)
            if self._on_alias_change is not None:
                await self._on_alias_change()
        return registry_pb2.DeleteAliasResponse(previous_version=str(previous.version))

    def _previous(self, name: str, alias: str) -> str:
        try:
            return str(self._registry.get(name, alias=alias).version)
        except NotFound:
            return ""
