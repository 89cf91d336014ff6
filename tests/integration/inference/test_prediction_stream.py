"""The prediction stream over real servers: one prediction per feature row, seq for seq."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest

from quantmesh.common.v1 import common_pb2
from quantmesh.inference.v1 import inference_pb2 as inf
from quantmesh.inference.v1 import inference_pb2_grpc
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.inference.cache import feature_digests
from quantmesh.services.inference.core import ModelServer
from quantmesh.services.inference.testing import MODEL_NAME as MODEL
from quantmesh.services.inference.testing import TinyModel

STREAM_ROWS = 240  # what the stand-in features service serves
WARMUP_ROWS = 20  # volatility_20 needs 21 bars


def subscribe(**fields: Any) -> inf.SubscribeRequest:
    return inf.SubscribeRequest(subscribe=inf.Subscription(**fields))


def credit(batches: int) -> inf.SubscribeRequest:
    return inf.SubscribeRequest(credit=common_pb2.Credit(batches=batches))


def flatten(batches: list[inf.PredictionBatch]) -> dict[str, np.ndarray]:
    def column(name: str) -> np.ndarray:
        return np.concatenate([np.array(getattr(b, name)) for b in batches])

    seqs = np.concatenate([b.seq + np.arange(len(b.time_msc)) for b in batches])
    names = ("time_msc", "probability_up", "predicted_class", "feature_digest", "feature_seq")
    return {"seq": seqs, **{name: column(name) for name in names}}


async def read_all(call: grpc.aio.StreamStreamCall[Any, Any]) -> list[inf.PredictionBatch]:
    return [response.batch async for response in call]


async def test_stream_predicts_every_feature_row_with_the_same_seq(
    inference_channel: grpc.aio.Channel,
    fake_features: Any,
    model_server: ModelServer,
    champion_model: TinyModel,
) -> None:
    features, _ = fake_features
    call = inference_pb2_grpc.InferenceServiceStub(inference_channel).Subscribe()
    await call.write(subscribe(batch_size=50, initial_credit=100))
    batches = await read_all(call)
    assert await call.code() == grpc.StatusCode.OK  # the finite feature stream ended
    assert [b.seq for b in batches] == [0, 50, 100, 150, 200]
    for batch in batches:
        assert [(m.name, m.version, m.alias, m.shadow) for m in batch.models] == [
            (MODEL, "1", "champion", False)
        ]
        assert set(batch.model_index) == {0}
        assert list(batch.symbols) == ["EURUSD"]
    rows = flatten(batches)
    np.testing.assert_array_equal(rows["seq"], np.arange(STREAM_ROWS))
    np.testing.assert_array_equal(rows["feature_seq"], rows["seq"])
    np.testing.assert_array_equal(rows["time_msc"], features.time_msc)

    # The model's columns, picked by name from a stream that orders them differently.
    inputs = features.columns(model_server.model(MODEL).feature_names)
    probability = rows["probability_up"]
    assert np.isnan(probability[:WARMUP_ROWS]).all()
    assert (rows["predicted_class"][:WARMUP_ROWS] == inf.PREDICTED_CLASS_UNSPECIFIED).all()
    expected = champion_model.probabilities(inputs[WARMUP_ROWS:])
    np.testing.assert_allclose(probability[WARMUP_ROWS:], expected, atol=1e-6)
    up = probability[WARMUP_ROWS:] >= 0.5
    classes = rows["predicted_class"][WARMUP_ROWS:]
    np.testing.assert_array_equal(
        classes, np.where(up, inf.PREDICTED_CLASS_UP, inf.PREDICTED_CLASS_DOWN)
    )
    assert 0 < up.sum() < len(up)  # a real model predicts both ways on real data
    np.testing.assert_array_equal(rows["feature_digest"], feature_digests(inputs))


async def test_resume_from_a_seq_gives_the_same_rows(
    inference_channel: grpc.aio.Channel, fake_features: Any
) -> None:
    features, _ = fake_features
    stub = inference_pb2_grpc.InferenceServiceStub(inference_channel)
    reference_call = stub.Subscribe()
    await reference_call.write(subscribe(batch_size=64, initial_credit=100))
    reference = flatten(await read_all(reference_call))
    resumed_call = stub.Subscribe()
    await resumed_call.write(subscribe(from_seq=137, batch_size=30, initial_credit=100))
    resumed = flatten(await read_all(resumed_call))
    assert features.subscriptions[-1].from_seq == 137  # one model: seqs map 1:1
    for name, column in resumed.items():
        np.testing.assert_array_equal(column, reference[name][137:])


async def test_stream_without_credit_sends_nothing_until_granted(
    inference_channel: grpc.aio.Channel,
) -> None:
    call = inference_pb2_grpc.InferenceServiceStub(inference_channel).Subscribe()
    await call.write(subscribe(batch_size=10))
    pending = asyncio.ensure_future(call.read())
    done, _ = await asyncio.wait({pending}, timeout=0.3)
    assert not done, "a batch arrived with no credit"
    await call.write(credit(1))
    response = await asyncio.wait_for(pending, timeout=5)
    assert response.batch.seq == 0
    call.cancel()


async def test_switch_mid_stream_lands_between_batches(
    inference_channel: grpc.aio.Channel,
) -> None:
    stub = inference_pb2_grpc.InferenceServiceStub(inference_channel)
    call = stub.Subscribe()
    await call.write(subscribe(batch_size=40, initial_credit=1))
    first = (await call.read()).batch
    await stub.SwitchModel(
        inf.SwitchModelRequest(model_name=MODEL, alias="challenger", role=inf.SERVING_ROLE_PRIMARY)
    )
    await call.write(credit(1))
    second = (await call.read()).batch
    call.cancel()
    assert (first.models[0].version, second.models[0].version) == ("1", "2")
    assert second.seq == first.seq + len(first.time_msc)


async def test_drain_ends_the_stream_unavailable_naming_the_resume_seq(
    inference_channel: grpc.aio.Channel, inference: ServiceRuntime
) -> None:
    call = inference_pb2_grpc.InferenceServiceStub(inference_channel).Subscribe()
    await call.write(subscribe(batch_size=50, initial_credit=1))
    await call.read()
    await inference.stop(grace=1.0)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "from_seq=50" in (raised.value.details() or "")


@pytest.mark.parametrize(
    ("requests", "code", "message_part"),
    [
        ([credit(1)], grpc.StatusCode.INVALID_ARGUMENT, "first message"),
        ([subscribe(model_names=["nope"])], grpc.StatusCode.NOT_FOUND, "'nope' is not served"),
        ([subscribe(batch_size=10**6)], grpc.StatusCode.INVALID_ARGUMENT, "batch_size"),
        ([subscribe(initial_credit=-1)], grpc.StatusCode.INVALID_ARGUMENT, "initial_credit"),
        (
            [subscribe(symbols=["XAUUSD"], initial_credit=1)],
            grpc.StatusCode.NOT_FOUND,
            "features service",
        ),
        (
            [subscribe(from_seq=10**6, initial_credit=1)],
            grpc.StatusCode.OUT_OF_RANGE,
            "beyond the end",
        ),
        (
            [subscribe(initial_credit=0), subscribe()],
            grpc.StatusCode.INVALID_ARGUMENT,
            "only once",
        ),
    ],
    ids=[
        "credit-first",
        "unknown-model",
        "batch-too-large",
        "negative-credit",
        "unknown-symbol-upstream",
        "from-seq-beyond-end-upstream",
        "second-subscribe",
    ],
)
async def test_subscribe_when_input_is_bad_answers_status(
    inference_channel: grpc.aio.Channel,
    requests: list[inf.SubscribeRequest],
    code: grpc.StatusCode,
    message_part: str,
) -> None:
    call = inference_pb2_grpc.InferenceServiceStub(inference_channel).Subscribe()
    for request in requests:
        await call.write(request)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await read_all(call)
    assert raised.value.code() == code
    assert message_part in (raised.value.details() or "")
