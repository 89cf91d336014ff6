"""The model registry's gRPC service, as the inference server carries it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import grpc
import pytest

from quantmesh.features.v1 import features_pb2
from quantmesh.registry.v1 import registry_pb2 as reg
from quantmesh.registry.v1 import registry_pb2_grpc
from quantmesh.services.inference.testing import MODEL_NAME as MODEL
from quantmesh.services.inference.testing import TinyModel, train_direction_model


def stub(channel: grpc.aio.Channel) -> registry_pb2_grpc.ModelRegistryServiceStub:
    return registry_pb2_grpc.ModelRegistryServiceStub(channel)


async def test_get_model_by_default_champion_version_and_alias(
    inference_channel: grpc.aio.Channel, champion_model: TinyModel
) -> None:
    api = stub(inference_channel)
    champion = (await api.GetModel(reg.GetModelRequest(name=MODEL))).model
    assert (champion.version, list(champion.aliases)) == ("1", ["champion"])
    assert champion.sha256 == hashlib.sha256(champion_model.onnx_bytes).hexdigest()
    assert [f.name for f in champion.feature_schema.features] == list(champion_model.feature_names)
    assert champion.artifact_uri.startswith("file://")
    assert champion.metrics["accuracy"] == pytest.approx(champion_model.metrics["accuracy"])
    assert (await api.GetModel(reg.GetModelRequest(name=MODEL, version="2"))).model.version == "2"
    by_alias = await api.GetModel(reg.GetModelRequest(name=MODEL, alias="challenger"))
    assert by_alias.model.version == "2"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.GetModel(reg.GetModelRequest(name="nope"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_list_model_versions_newest_first_in_pages(
    inference_channel: grpc.aio.Channel,
) -> None:
    api = stub(inference_channel)
    first = await api.ListModelVersions(reg.ListModelVersionsRequest(name=MODEL, page_size=1))
    assert [v.version for v in first.versions] == ["2"]
    second = await api.ListModelVersions(
        reg.ListModelVersionsRequest(name=MODEL, page_size=1, page_token=first.next_page_token)
    )
    assert [v.version for v in second.versions] == ["1"]
    assert second.next_page_token == ""


async def test_register_model_from_a_file_uri_is_idempotent_on_content(
    inference_channel: grpc.aio.Channel, tmp_path: Path
) -> None:
    model = train_direction_model(l2=50.0)
    path = tmp_path / "model.onnx"
    path.write_bytes(model.onnx_bytes)
    version = reg.ModelVersion(
        name=MODEL,
        artifact_uri=path.as_uri(),
        sha256=hashlib.sha256(model.onnx_bytes).hexdigest(),
        metrics=model.metrics,
        data_from_time_ms=model.data_from_ms,
        data_to_time_ms=model.data_to_ms,
        feature_schema=features_pb2.FeatureSchema(
            version="1", features=[features_pb2.FeatureSpec(name=n) for n in model.feature_names]
        ),
        symbol="EURUSD",
        horizon_bars=1,
    )
    api = stub(inference_channel)
    first = await api.RegisterModel(reg.RegisterModelRequest(model=version))
    again = await api.RegisterModel(reg.RegisterModelRequest(model=version))
    assert (first.model.version, first.existing) == ("3", False)
    assert (again.model.version, again.existing) == ("3", True)
    assert (first.model.symbol, first.model.horizon_bars) == ("EURUSD", 1)
    assert first.model.feature_schema.version == "1"

    version.sha256 = "0" * 64
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.RegisterModel(reg.RegisterModelRequest(model=version))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    version.artifact_uri = "s3://bucket/model.onnx"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.RegisterModel(reg.RegisterModelRequest(model=version))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_delete_alias_refuses_the_served_champion(
    inference_channel: grpc.aio.Channel,
) -> None:
    api = stub(inference_channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.DeleteAlias(reg.DeleteAliasRequest(name=MODEL, alias="champion"))
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    deleted = await api.DeleteAlias(reg.DeleteAliasRequest(name=MODEL, alias="challenger"))
    assert deleted.previous_version == "2"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.DeleteAlias(reg.DeleteAliasRequest(name=MODEL, alias="challenger"))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
