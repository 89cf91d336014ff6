"""The streaming core: seq numbering, resume inside a row's group, warm-up rows."""

from __future__ import annotations

import numpy as np
import pytest

from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from quantmesh.services.inference.core import ModelServer, PredictedClass
from quantmesh.services.inference.stream import (
    FeatureColumns,
    PredictionColumns,
    StreamPredictor,
    StreamRequest,
    plan_stream,
)
from quantmesh.services.inference.testing import (
    DEFAULT_FEATURES,
    MODEL_NAME,
    TinyModel,
    register_tiny_model,
)
from quantmesh.services.registry.core import ModelRegistry

OTHER = "eurusd-h1-direction-b"
COLUMNS = ("zscore_20", "hour_cos", *reversed(DEFAULT_FEATURES[:3]))  # by name, not position


@pytest.fixture
def two_models(
    registry: ModelRegistry, server: ModelServer, challenger_model: TinyModel
) -> ModelServer:
    register_tiny_model(registry, OTHER, challenger_model, ["champion"])
    server.serve(OTHER)
    return server


def feature_batch(seq: int, rows: np.ndarray) -> FeatureColumns:
    """``rows`` (in the models' order) laid out in the stream's :data:`COLUMNS` order."""
    by_name = dict(zip(DEFAULT_FEATURES, rows.T.astype(np.float64), strict=True))
    by_name["hour_cos"] = np.ones(len(rows))
    return FeatureColumns(
        seq=seq,
        symbols=("EURUSD",),
        symbol_index=np.zeros(len(rows), np.uint32),
        time_msc=1_000 * (seq + np.arange(len(rows), dtype=np.int64)),
        feature_names=COLUMNS,
        values=np.column_stack([by_name[name] for name in COLUMNS]),
    )


def run(
    server: ModelServer, request: StreamRequest, batches: list[np.ndarray]
) -> list[PredictionColumns]:
    plan = plan_stream(request, server)
    predict = StreamPredictor(server, plan)
    out, seq = [], plan.feature_from_seq
    for rows in batches:
        out.append(predict(predict.pending(feature_batch(seq, rows))))
        seq += len(rows)
    return out


def test_with_two_models_each_feature_row_gives_two_consecutive_rows(
    two_models: ModelServer, features: np.ndarray, challenger_model: TinyModel
) -> None:
    (batch,) = run(two_models, StreamRequest(), [features[:5]])
    assert (batch.seq, len(batch)) == (0, 10)
    assert [(ref.name, ref.version) for ref in batch.models] == [(MODEL_NAME, 1), (OTHER, 1)]
    assert batch.model_index.tolist() == [0, 1] * 5
    assert batch.feature_seq.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    np.testing.assert_allclose(
        batch.probability_up[1::2], challenger_model.probabilities(features[:5]), atol=1e-6
    )


def test_resume_inside_a_rows_group_starts_at_that_model(
    two_models: ModelServer, features: np.ndarray
) -> None:
    (reference,) = run(two_models, StreamRequest(), [features[:6]])
    plan = plan_stream(StreamRequest(from_seq=5), two_models)
    assert (plan.feature_from_seq, plan.feature_batch_size) == (2, 500)
    first, second = run(two_models, StreamRequest(from_seq=5), [features[2:4], features[4:6]])
    assert (first.seq, len(first), second.seq, len(second)) == (5, 3, 8, 4)
    resumed = np.concatenate([first.probability_up, second.probability_up])
    np.testing.assert_array_equal(resumed, reference.probability_up[5:])
    assert np.concatenate([first.feature_seq, second.feature_seq]).tolist() == [2, 3, 3, 4, 4, 5, 5]


def test_warm_up_rows_get_nan_and_unspecified_but_keep_their_seq(
    server: ModelServer, features: np.ndarray
) -> None:
    rows = features[:4].copy()
    rows[1, 3] = np.nan
    (batch,) = run(server, StreamRequest(), [rows])
    assert batch.feature_seq.tolist() == [0, 1, 2, 3]
    assert np.isnan(batch.probability_up[1])
    assert batch.predicted_class[1] == PredictedClass.UNSPECIFIED
    predicted = set(batch.predicted_class[[0, 2, 3]].tolist())
    assert predicted <= {PredictedClass.UP, PredictedClass.DOWN}


@pytest.mark.parametrize(
    ("request_", "error", "match"),
    [
        (StreamRequest(model_names=["nope"]), NotFound, "'nope' is not served"),
        (StreamRequest(batch_size=1), InvalidArgument, "batch_size must be 2"),
        (StreamRequest(batch_size=200_000), InvalidArgument, "batch_size"),
        (StreamRequest(initial_credit=-1), InvalidArgument, "initial_credit"),
    ],
)
def test_plan_when_request_bad_raises(
    two_models: ModelServer, request_: StreamRequest, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        plan_stream(request_, two_models)


def test_plan_when_nothing_served_raises_not_found(registry: ModelRegistry) -> None:
    with pytest.raises(NotFound, match="no model is served"):
        plan_stream(StreamRequest(), ModelServer(registry))


def test_plan_and_batches_when_stream_lacks_a_models_feature_fail_precondition(
    server: ModelServer, features: np.ndarray
) -> None:
    with pytest.raises(FailedPrecondition, match="volatility_20"):
        plan_stream(StreamRequest(), server, stream_features=["log_return_1", "log_return_4"])
    predict = StreamPredictor(server, plan_stream(StreamRequest(), server))
    batch = feature_batch(0, features[:2])
    narrow = FeatureColumns(
        batch.seq,
        batch.symbols,
        batch.symbol_index,
        batch.time_msc,
        batch.feature_names[:2],
        batch.values[:, :2],
    )
    with pytest.raises(FailedPrecondition, match="does not carry"):
        predict(predict.pending(narrow))
