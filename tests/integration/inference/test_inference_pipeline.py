"""The real pipeline: market data → features → inference, each a real server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest

from quantmesh.inference.v1 import inference_pb2 as inf
from quantmesh.inference.v1 import inference_pb2_grpc
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.features.client import FeatureSubscriber
from quantmesh.services.features.config import FeaturesSettings
from quantmesh.services.features.service import build_runtime as features_runtime
from quantmesh.services.inference.config import InferenceSettings
from quantmesh.services.inference.core import ModelServer
from quantmesh.services.inference.service import build_runtime as inference_runtime
from quantmesh.services.inference.testing import MODEL_NAME, TinyModel

ROWS = 200


@pytest.fixture
async def features_service(marketdata: ServiceRuntime) -> AsyncIterator[ServiceRuntime]:
    settings = FeaturesSettings(port=0, marketdata_address=f"127.0.0.1:{marketdata.port}")
    runtime = features_runtime(settings)
    await runtime.start()
    yield runtime
    await runtime.stop(grace=0.2)


async def test_predictions_on_the_real_feature_stream_match_the_model(
    features_service: ServiceRuntime, model_server: ModelServer, champion_model: TinyModel
) -> None:
    features_address = f"127.0.0.1:{features_service.port}"
    settings = InferenceSettings(port=0, features_address=features_address, alias_poll_seconds=0)
    async with (
        inference_runtime(settings, model_server=model_server) as inference,
        grpc.aio.insecure_channel(f"127.0.0.1:{inference.port}") as channel,
    ):
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        call = stub.Subscribe()
        await call.write(inf.SubscribeRequest(subscribe=inf.Subscription(initial_credit=1_000)))
        seqs: list[int] = []
        probability: list[float] = []
        while len(seqs) < ROWS:
            batch = (await call.read()).batch
            seqs.extend(batch.feature_seq)
            probability.extend(batch.probability_up)
        call.cancel()

    # The same rows, read straight from the features service, picked by name.
    names = model_server.model(MODEL_NAME).feature_names
    rows: list[np.ndarray] = []
    async with grpc.aio.insecure_channel(features_address) as channel:
        async for batch in FeatureSubscriber(channel).batches():
            values = np.array(batch.values).reshape(len(batch.time_msc), -1)
            columns = [list(batch.feature_names).index(name) for name in names]
            rows.append(values[:, columns])
            if sum(map(len, rows)) >= len(seqs):
                break
    inputs = np.concatenate(rows)[: len(seqs)]

    assert seqs == list(range(len(seqs)))
    ready = np.isfinite(inputs).all(axis=1)
    assert 0 < ready.sum() < len(seqs)  # warm-up rows first, then predictions
    got = np.array(probability)
    assert np.isnan(got[~ready]).all()
    expected = champion_model.probabilities(inputs[ready].astype(np.float32))
    np.testing.assert_allclose(got[ready], expected, atol=1e-6)
