"""Switching the served model without a restart and without dropping a request."""

from __future__ import annotations

import asyncio
import time

import grpc
import numpy as np
import pytest

from quantmesh.inference.v1 import inference_pb2, inference_pb2_grpc, open_inference_pb2_grpc
from quantmesh.inference.v1 import open_inference_pb2 as oip
from quantmesh.registry.v1 import registry_pb2, registry_pb2_grpc
from quantmesh.services.inference.config import InferenceSettings
from quantmesh.services.inference.core import ModelServer
from quantmesh.services.inference.service import build_runtime
from quantmesh.services.inference.testing import MODEL_NAME as MODEL
from quantmesh.services.inference.testing import direction_dataset

PRIMARY = inference_pb2.SERVING_ROLE_PRIMARY


def infer_request(row: np.ndarray) -> oip.ModelInferRequest:
    tensor = oip.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP32", shape=[1, row.size]
    )
    tensor.contents.fp32_contents.extend(row.tolist())
    return oip.ModelInferRequest(model_name=MODEL, inputs=[tensor])


async def test_switch_to_challenger_under_load_drops_no_request(
    inference_channel: grpc.aio.Channel,
) -> None:
    api = open_inference_pb2_grpc.GRPCInferenceServiceStub(inference_channel)
    control = inference_pb2_grpc.InferenceServiceStub(inference_channel)
    features = direction_dataset()[0].astype(np.float32)
    answers: list[tuple[bool, str]] = []  # (sent after SwitchModel answered, version)
    failures: list[BaseException] = []
    switched_at: list[float] = []
    stop = asyncio.Event()
    reached = asyncio.Event()
    target = [200]

    async def hammer(worker: int) -> None:
        i = worker
        while not stop.is_set():
            sent = time.monotonic()
            try:
                # Distinct rows: every request runs a session, none is a cache hit.
                reply = await api.ModelInfer(infer_request(features[i % len(features)]))
            except grpc.aio.AioRpcError as error:
                failures.append(error)
                continue
            answers.append((bool(switched_at) and sent > switched_at[0], reply.model_version))
            if len(answers) >= target[0]:
                reached.set()
            i += 4

    workers = [asyncio.create_task(hammer(worker)) for worker in range(4)]
    await asyncio.wait_for(reached.wait(), timeout=20)
    reply = await control.SwitchModel(
        inference_pb2.SwitchModelRequest(model_name=MODEL, alias="challenger", role=PRIMARY)
    )
    switched_at.append(time.monotonic())
    target[0] = len(answers) + 200
    reached.clear()
    await asyncio.wait_for(reached.wait(), timeout=20)
    stop.set()
    await asyncio.gather(*workers)

    assert failures == []
    assert (reply.model.model.version, reply.model.model.alias) == ("2", "challenger")
    assert reply.previous.version == "1"
    assert answers[0][1] == "1"
    assert {version for after, version in answers if after} == {"2"}
    served = (await control.ListModels(inference_pb2.ListModelsRequest())).models
    assert [(m.model.name, m.model.version, m.model.alias, m.ready) for m in served] == [
        (MODEL, "2", "challenger", True)
    ]


async def test_set_alias_on_the_registry_moves_the_served_champion(
    inference_channel: grpc.aio.Channel,
) -> None:
    api = open_inference_pb2_grpc.GRPCInferenceServiceStub(inference_channel)
    registry = registry_pb2_grpc.ModelRegistryServiceStub(inference_channel)
    row = direction_dataset()[0][0].astype(np.float32)
    assert (await api.ModelInfer(infer_request(row))).model_version == "1"
    moved = await registry.SetAlias(
        registry_pb2.SetAliasRequest(name=MODEL, alias="champion", version="2")
    )
    assert moved.previous_version == "1"
    assert (await api.ModelInfer(infer_request(row))).model_version == "2"


async def test_alias_moved_by_another_process_is_followed_by_polling(
    model_server: ModelServer,
) -> None:
    settings = InferenceSettings(
        port=0, registry_root=model_server.registry.root, alias_poll_seconds=0.05
    )
    async with build_runtime(settings, model_server=model_server):
        # The trainer's process moves the alias in the shared registry directory.
        model_server.registry.set_alias(MODEL, "champion", 2)
        for _ in range(250):  # up to 5 s
            if model_server.model(MODEL).version == 2:
                break
            await asyncio.sleep(0.02)
    assert model_server.model(MODEL).version == 2
    assert model_server.model(MODEL).alias == "champion"


@pytest.mark.parametrize(
    ("request_", "code", "message_part"),
    [
        (
            inference_pb2.SwitchModelRequest(model_name="nope", alias="champion", role=PRIMARY),
            grpc.StatusCode.NOT_FOUND,
            "no model named 'nope'",
        ),
        (
            inference_pb2.SwitchModelRequest(model_name=MODEL, alias="staging", role=PRIMARY),
            grpc.StatusCode.NOT_FOUND,
            "no alias 'staging'",
        ),
        (
            inference_pb2.SwitchModelRequest(model_name=MODEL, version="7", role=PRIMARY),
            grpc.StatusCode.NOT_FOUND,
            "no version 7",
        ),
        (
            inference_pb2.SwitchModelRequest(model_name=MODEL, version="two", role=PRIMARY),
            grpc.StatusCode.INVALID_ARGUMENT,
            "version must be",
        ),
        (
            inference_pb2.SwitchModelRequest(model_name=MODEL, role=PRIMARY),
            grpc.StatusCode.INVALID_ARGUMENT,
            "set the target",
        ),
        (
            inference_pb2.SwitchModelRequest(model_name=MODEL, alias="challenger"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "SERVING_ROLE_PRIMARY",
        ),
    ],
    ids=[
        "unknown-model",
        "unknown-alias",
        "unknown-version",
        "bad-version",
        "no-target",
        "no-role",
    ],
)
async def test_switch_model_when_input_is_bad_answers_status_and_keeps_serving(
    inference_channel: grpc.aio.Channel,
    request_: inference_pb2.SwitchModelRequest,
    code: grpc.StatusCode,
    message_part: str,
) -> None:
    control = inference_pb2_grpc.InferenceServiceStub(inference_channel)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await control.SwitchModel(request_)
    assert raised.value.code() == code
    assert message_part in (raised.value.details() or "")
    served = (await control.ListModels(inference_pb2.ListModelsRequest())).models
    assert [m.model.version for m in served] == ["1"]
