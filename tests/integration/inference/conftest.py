"""Fixtures of the inference tests: real trained models, a registry, real servers.

The models are logistic regressions fitted on the shipped EUR/USD H1 bars
(:mod:`quantmesh.services.inference.testing`); the champion and the challenger differ in
their regularisation, so they are two artifacts with the same signature. The feature
stream is a stand-in FeaturesService that serves those bars' real feature values with the
stream semantics of the contract (credit, acks, from_seq), its columns in another order
than the model's and with columns the model does not use, so selection by name is tested.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from quantmesh.datasets import load_h1_bars
from quantmesh.features.v1 import features_pb2, features_pb2_grpc
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.runtime.streams import CreditFlow, produce, read_controls
from quantmesh.services.features.schema import FEATURE_NAMES
from quantmesh.services.inference.config import InferenceSettings
from quantmesh.services.inference.core import ModelServer
from quantmesh.services.inference.service import build_runtime
from quantmesh.services.inference.testing import (
    MODEL_NAME,
    TinyModel,
    feature_matrix,
    register_tiny_model,
    train_direction_model,
)
from quantmesh.services.registry.core import ModelRegistry

MODEL = MODEL_NAME
# The stream's columns: the model's four in another order, plus two it does not use.
STREAM_COLUMNS = ("hour_sin", "zscore_20", "tick_count", "log_return_4", "volatility_20")
STREAM_COLUMNS += ("log_return_1",)
STREAM_ROWS = 240  # ten days of H1 bars, warm-up (20 rows of NaN) included


@pytest.fixture(scope="session")
def champion_model() -> TinyModel:
    return train_direction_model(l2=1.0)


@pytest.fixture(scope="session")
def challenger_model() -> TinyModel:
    return train_direction_model(l2=2_000.0)


@pytest.fixture
def registry(
    tmp_path: Path, champion_model: TinyModel, challenger_model: TinyModel
) -> ModelRegistry:
    """Version 1 is the champion, version 2 the challenger."""
    registry = ModelRegistry(tmp_path / "registry")
    register_tiny_model(registry, MODEL, champion_model, ["champion"])
    register_tiny_model(registry, MODEL, challenger_model, ["challenger"])
    return registry


@pytest.fixture
def model_server(registry: ModelRegistry) -> ModelServer:
    server = ModelServer(registry, cache_size=10_000, stream_feature_names=FEATURE_NAMES)
    server.serve(f"{MODEL}@champion")
    return server


@dataclass(frozen=True)
class _Rows:
    seq: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.seq


class FakeFeatures(features_pb2_grpc.FeaturesServiceServicer):
    """Serves the features of the first :data:`STREAM_ROWS` shipped bars, for EURUSD only."""

    def __init__(self) -> None:
        bars = load_h1_bars()
        close = bars.close[:STREAM_ROWS]
        self.time_msc = bars.time_ms[:STREAM_ROWS] + 3_600_000  # a row is known at bar end
        hour = (self.time_msc // 3_600_000) % 24
        computed = {
            name: feature_matrix(close, [name])[:, 0]
            for name in STREAM_COLUMNS
            if name not in ("hour_sin", "tick_count")
        }
        computed["hour_sin"] = np.sin(2 * np.pi * hour / 24)
        computed["tick_count"] = np.full(STREAM_ROWS, 100.0)
        self.values = np.column_stack([computed[name] for name in STREAM_COLUMNS])
        self.subscriptions: list[features_pb2.Subscription] = []
        self.shutdown = asyncio.Event()

    def columns(self, names: tuple[str, ...]) -> np.ndarray:
        """The stream's values of ``names``, in that order."""
        return self.values[:, [STREAM_COLUMNS.index(name) for name in names]]

    async def Subscribe(
        self,
        request_iterator: AsyncIterator[features_pb2.SubscribeRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[features_pb2.SubscribeResponse]:
        first = await anext(request_iterator)
        subscription = first.subscribe
        self.subscriptions.append(subscription)
        if list(subscription.symbols) not in ([], ["EURUSD"]):
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown symbol(s); serves EURUSD")
        if subscription.from_seq > STREAM_ROWS:
            await context.abort(grpc.StatusCode.OUT_OF_RANGE, "from_seq beyond the end")
        flow = CreditFlow.starting_at(subscription.from_seq, subscription.initial_credit)
        reader = asyncio.create_task(read_controls(request_iterator, flow))
        size = subscription.batch_size or 1_000

        async def chunks() -> AsyncIterator[_Rows]:
            for start in range(subscription.from_seq, STREAM_ROWS, size):
                yield _Rows(start, min(start + size, STREAM_ROWS))

        try:
            async for message in produce(chunks(), flow, self.shutdown, self._encode):
                yield message
        finally:
            reader.cancel()

    def _encode(self, rows: _Rows) -> features_pb2.SubscribeResponse:
        part = slice(rows.seq, rows.stop)
        return features_pb2.SubscribeResponse(
            batch=features_pb2.FeatureBatch(
                seq=rows.seq,
                symbols=["EURUSD"],
                symbol_index=[0] * len(rows),
                time_msc=self.time_msc[part].tolist(),
                feature_names=STREAM_COLUMNS,
                values=self.values[part].ravel().tolist(),
                schema_version="1",
            )
        )


@pytest.fixture
async def fake_features() -> AsyncIterator[tuple[FakeFeatures, str]]:
    """A FakeFeatures server on a free port, and its address."""
    servicer = FakeFeatures()
    server = grpc.aio.server()
    features_pb2_grpc.add_FeaturesServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield servicer, f"127.0.0.1:{port}"
    await server.stop(0.2)


@pytest.fixture
async def inference(
    model_server: ModelServer, fake_features: tuple[FakeFeatures, str]
) -> AsyncIterator[ServiceRuntime]:
    """The inference service on a free port, serving ``model_server``."""
    settings = InferenceSettings(
        port=0,
        registry_root=model_server.registry.root,
        features_address=fake_features[1],
        alias_poll_seconds=0,
    )
    runtime = build_runtime(settings, model_server=model_server)
    await runtime.start()
    yield runtime
    await runtime.stop(grace=0.2)


@pytest.fixture
async def inference_channel(inference: ServiceRuntime) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{inference.port}") as channel:
        yield channel
