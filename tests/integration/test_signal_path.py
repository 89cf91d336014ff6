"""The signal path as it runs in production: four processes linked by real gRPC streams.

marketdata → features → inference → decision, each its own process on a free port,
with a model really trained on the shipped data in the registry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]
import pytest

from quantmesh.decision.v1 import decision_pb2
from quantmesh.mesh.launcher import ServiceProcess, local_pipeline
from quantmesh.services.decision.client import SignalSubscriber
from quantmesh.services.inference.testing import (
    MODEL_NAME,
    register_tiny_model,
    train_direction_model,
)
from quantmesh.services.registry.core import ModelRegistry

pytestmark = pytest.mark.slow

YEAR_ROWS = 6_225  # H1 bars in the shipped data: one feature row, one decision each


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("quantmesh-home")
    register_tiny_model(
        ModelRegistry(root / "registry"), MODEL_NAME, train_direction_model(), ["champion"]
    )
    return root


@pytest.fixture(scope="module")
def pipeline(home: Path) -> Iterator[dict[str, ServiceProcess]]:
    with local_pipeline(home) as running:
        yield running


async def read_signals(
    address: str, include_hold: bool, on_count: tuple[int, object] | None = None
) -> list[decision_pb2.Signal]:
    signals: list[decision_pb2.Signal] = []
    async with grpc.aio.insecure_channel(address) as channel:
        subscriber = SignalSubscriber(channel, ["EURUSD"], include_hold=include_hold, window=2)
        async for batch in subscriber.batches():
            signals.extend(batch.signals)
            if on_count is not None and len(signals) >= on_count[0]:
                action, on_count = on_count[1], None
                await asyncio.to_thread(action)  # type: ignore[arg-type]
    return signals


def summary(signals: list[decision_pb2.Signal]) -> list[tuple[object, ...]]:
    return [
        (s.seq, s.signal_id, s.action, s.feature_seq, s.stop_loss.points, s.reason) for s in signals
    ]


async def test_ticks_become_signals_for_every_bar_with_reasons(
    pipeline: dict[str, ServiceProcess],
) -> None:
    signals = await read_signals(pipeline["decision"].address, include_hold=True)
    assert len(signals) == YEAR_ROWS
    assert [s.seq for s in signals] == list(range(YEAR_ROWS))
    assert [s.feature_seq for s in signals] == list(range(YEAR_ROWS))
    actions = {s.action for s in signals}
    assert {decision_pb2.ACTION_BUY, decision_pb2.ACTION_SELL, decision_pb2.ACTION_HOLD} <= actions
    for signal in signals:
        assert signal.reason
        assert signal.model_name == MODEL_NAME
        assert signal.model_version == "1"
        if signal.action in (decision_pb2.ACTION_BUY, decision_pb2.ACTION_SELL):
            risk = abs(signal.reference_price.points - signal.stop_loss.points)
            reward = abs(signal.take_profit.points - signal.reference_price.points)
            assert risk > 0
            assert reward == pytest.approx(2 * risk, abs=1)


async def test_each_signal_is_reproducible_from_its_recorded_inputs(
    pipeline: dict[str, ServiceProcess], home: Path
) -> None:
    first = await read_signals(pipeline["decision"].address, include_hold=False)
    second = await read_signals(pipeline["decision"].address, include_hold=False)
    assert summary(first) == summary(second)
    # The recorded features, run through the registered model, give the recorded output.
    registry = ModelRegistry(home / "registry")
    model = registry.get(MODEL_NAME, alias="champion")
    session = ort.InferenceSession(registry.read_artifact(model))
    traded = [s for s in first if s.action != decision_pb2.ACTION_CLOSE]
    features = np.array([list(s.feature_values) for s in traded], dtype=np.float32)
    assert [tuple(s.feature_names) for s in traded[:1]] == [model.feature_names]
    (probabilities,) = session.run(None, {"features": features})
    recorded = np.array([s.output_values[0] for s in traded])
    np.testing.assert_allclose(probabilities.ravel(), recorded, rtol=1e-6)


async def test_killing_features_mid_stream_loses_and_duplicates_no_signal(
    pipeline: dict[str, ServiceProcess],
) -> None:
    decision_address = pipeline["decision"].address
    reference = await read_signals(decision_address, include_hold=True)
    features = pipeline["features"]

    def crash_and_restart() -> None:
        features.stop(kill=True)
        features.start()

    interrupted = await read_signals(
        decision_address, include_hold=True, on_count=(1_500, crash_and_restart)
    )
    assert summary(interrupted) == summary(reference)
    # The crash really cut live streams: decision and inference had to resume.
    assert "stream dropped, resuming" in pipeline["decision"].logs()
    assert "stream dropped, resuming" in pipeline["inference"].logs()
