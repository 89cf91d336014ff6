"""The Open Inference Protocol (KServe v2) over a real server: metadata, infer, bad input."""

from __future__ import annotations

import functools

import grpc
import numpy as np
import pytest

from quantmesh.inference.v1 import open_inference_pb2 as oip
from quantmesh.inference.v1 import open_inference_pb2_grpc
from quantmesh.services.inference.core import ModelServer
from quantmesh.services.inference.testing import MODEL_NAME as MODEL
from quantmesh.services.inference.testing import TinyModel, direction_dataset

K = 4  # the test models' features

Tensor = oip.ModelInferRequest.InferInputTensor


def stub(channel: grpc.aio.Channel) -> open_inference_pb2_grpc.GRPCInferenceServiceStub:
    return open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)


@functools.cache
def _dataset() -> np.ndarray:
    return direction_dataset()[0].astype(np.float32)


def rows(n: int, offset: int = 0) -> np.ndarray:
    """``n`` real feature rows of the shipped data."""
    return _dataset()[offset : offset + n].copy()


def infer_request(
    features: np.ndarray, raw: bool = False, **fields: object
) -> oip.ModelInferRequest:
    tensor = Tensor(name="features", datatype="FP32", shape=features.shape)
    fields = {"model_name": MODEL, **fields}
    request = oip.ModelInferRequest(inputs=[tensor], **fields)  # type: ignore[arg-type]
    if raw:
        request.raw_input_contents.append(features.astype("<f4").tobytes())
    else:
        request.inputs[0].contents.fp32_contents.extend(features.ravel().tolist())
    return request


async def test_server_live_ready_and_metadata(inference_channel: grpc.aio.Channel) -> None:
    api = stub(inference_channel)
    assert (await api.ServerLive(oip.ServerLiveRequest())).live
    assert (await api.ServerReady(oip.ServerReadyRequest())).ready
    metadata = await api.ServerMetadata(oip.ServerMetadataRequest())
    assert metadata.name == "quantmesh-inference"
    assert metadata.version


async def test_model_metadata_describes_fp32_tensors_with_dynamic_batch(
    inference_channel: grpc.aio.Channel, model_server: ModelServer
) -> None:
    reply = await stub(inference_channel).ModelMetadata(oip.ModelMetadataRequest(name=MODEL))
    assert reply.name == MODEL
    assert reply.platform == "onnxruntime_onnx"
    assert list(reply.versions) == ["1", "2"]
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.inputs] == [
        ("features", "FP32", [-1, K])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in reply.outputs] == [
        ("probability_up", "FP32", [-1, 1])
    ]
    assert reply.properties["sha256"] == model_server.model(MODEL).record.sha256
    assert reply.properties["aliases"] == "champion"
    assert reply.properties["feature_names"].split(",") == list(
        model_server.model(MODEL).feature_names
    )


async def test_model_ready_for_served_versions_and_not_found_otherwise(
    inference_channel: grpc.aio.Channel,
) -> None:
    api = stub(inference_channel)
    for version in ("", "1", "champion", "2", "challenger"):
        assert (await api.ModelReady(oip.ModelReadyRequest(name=MODEL, version=version))).ready
    for name, version in (("no-such-model", ""), (MODEL, "99"), (MODEL, "staging")):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await api.ModelReady(oip.ModelReadyRequest(name=name, version=version))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("raw", [False, True], ids=["fp32-contents", "raw-contents"])
async def test_model_infer_batch_returns_the_models_probabilities(
    inference_channel: grpc.aio.Channel, champion_model: TinyModel, raw: bool
) -> None:
    features = rows(5)
    reply = await stub(inference_channel).ModelInfer(infer_request(features, raw=raw, id="r-1"))
    assert (reply.model_name, reply.model_version, reply.id) == (MODEL, "1", "r-1")
    (output,) = reply.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("probability_up", "FP32", [5, 1])
    if raw:
        assert not output.HasField("contents")
        probabilities = np.frombuffer(reply.raw_output_contents[0], "<f4")
    else:
        assert not reply.raw_output_contents
        probabilities = np.array(output.contents.fp32_contents, np.float32)
    np.testing.assert_allclose(probabilities, champion_model.probabilities(features), atol=1e-6)


async def test_model_infer_names_versions_and_aliases(
    inference_channel: grpc.aio.Channel, challenger_model: TinyModel
) -> None:
    api = stub(inference_channel)
    features = rows(2)
    for version in ("2", "challenger"):
        reply = await api.ModelInfer(infer_request(features, model_version=version))
        assert reply.model_version == "2"
        got = np.array(reply.outputs[0].contents.fp32_contents)
        np.testing.assert_allclose(got, challenger_model.probabilities(features), atol=1e-6)


async def test_model_infer_honours_requested_outputs(inference_channel: grpc.aio.Channel) -> None:
    api = stub(inference_channel)
    wanted = [oip.ModelInferRequest.InferRequestedOutputTensor(name="probability_up")]
    reply = await api.ModelInfer(infer_request(rows(1), outputs=wanted))
    assert [output.name for output in reply.outputs] == ["probability_up"]
    unknown = [oip.ModelInferRequest.InferRequestedOutputTensor(name="p_flat")]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.ModelInfer(infer_request(rows(1), outputs=unknown))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no output 'p_flat'" in (raised.value.details() or "")


async def test_model_infer_when_row_repeats_answers_from_the_cache(
    inference_channel: grpc.aio.Channel, model_server: ModelServer
) -> None:
    api = stub(inference_channel)
    request = infer_request(rows(1, offset=100))
    before = model_server.cache.stats()
    first = await api.ModelInfer(request)
    second = await api.ModelInfer(request)
    after = model_server.cache.stats()
    assert (after.misses - before.misses, after.hits - before.hits) == (1, 1)
    assert first.outputs[0].contents == second.outputs[0].contents


def _with(features: np.ndarray, **changes: object) -> oip.ModelInferRequest:
    request = infer_request(features)
    tensor = request.inputs[0]
    for name, value in changes.items():
        if name == "shape":
            del tensor.shape[:]
            tensor.shape.extend(value)  # type: ignore[call-overload]
        elif name == "fp64":
            tensor.datatype = "FP64"
            tensor.contents.Clear()
            tensor.contents.fp64_contents.extend(features.ravel().tolist())
        elif name == "int32":
            tensor.datatype = "INT32"
            tensor.contents.Clear()
            tensor.contents.int_contents.extend([1] * features.size)
        else:
            setattr(tensor, name, value)
    return request


NAN_ROW = rows(2).copy()
NAN_ROW[1, 2] = np.nan
INF_ROW = rows(1).copy()
INF_ROW[0, 0] = np.inf


@pytest.mark.parametrize(
    ("request_", "code", "message_parts"),
    [
        (_with(rows(2), shape=[2, 3]), "INVALID_ARGUMENT", ["shape [N, 4]", "FP32", "[2, 3]"]),
        (_with(rows(2), shape=[8]), "INVALID_ARGUMENT", ["shape [N, 4]", "got shape [8]"]),
        (_with(rows(2), shape=[4, 4]), "INVALID_ARGUMENT", ["8 values", "needs 16"]),
        (_with(rows(2), fp64=True), "INVALID_ARGUMENT", ["datatype FP32", "got datatype FP64"]),
        (_with(rows(2), int32=True), "INVALID_ARGUMENT", ["datatype FP32", "got datatype INT32"]),
        (infer_request(NAN_ROW), "INVALID_ARGUMENT", ["finite", "row 1, column 2", "nan"]),
        (infer_request(INF_ROW), "INVALID_ARGUMENT", ["finite", "row 0, column 0", "inf"]),
        (_with(rows(1), name="x"), "INVALID_ARGUMENT", ["one input 'features'", "['x']"]),
        (oip.ModelInferRequest(model_name=MODEL), "INVALID_ARGUMENT", ["FP32", "inputs []"]),
        (
            infer_request(rows(1), model_name="no-such-model"),
            "NOT_FOUND",
            ["'no-such-model' is not served"],
        ),
        (infer_request(rows(1), model_version="99"), "NOT_FOUND", ["no version 99"]),
    ],
    ids=[
        "wrong-width",
        "wrong-rank",
        "contents-shorter-than-shape",
        "fp64",
        "int32",
        "nan-feature",
        "inf-feature",
        "wrong-input-name",
        "missing-input",
        "unknown-model",
        "unknown-version",
    ],
)
async def test_model_infer_when_input_is_bad_answers_status_and_server_stays_up(
    inference_channel: grpc.aio.Channel,
    request_: oip.ModelInferRequest,
    code: str,
    message_parts: list[str],
) -> None:
    api = stub(inference_channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.ModelInfer(request_)
    assert raised.value.code() == getattr(grpc.StatusCode, code)
    details = raised.value.details() or ""
    for part in message_parts:
        assert part in details, details
    assert (await api.ModelInfer(infer_request(rows(1)))).outputs


async def test_model_infer_when_raw_bytes_do_not_match_shape_is_invalid(
    inference_channel: grpc.aio.Channel,
) -> None:
    request = infer_request(rows(2), raw=True)
    request.raw_input_contents[0] = request.raw_input_contents[0][:-4]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub(inference_channel).ModelInfer(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "28 bytes" in (raised.value.details() or "")
    assert "needs 32" in (raised.value.details() or "")
