"""ModelServer and LoadedModel: validation, prediction, switching, refresh."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from quantmesh.services.inference.core import (
    MAX_PINNED_VERSIONS,
    ModelServer,
    PredictedClass,
    classify,
)
from quantmesh.services.inference.testing import (
    MODEL_NAME,
    TinyModel,
    logistic_onnx,
    register_tiny_model,
)
from quantmesh.services.registry.core import ModelRegistry


def test_predict_matches_the_fitted_model(
    server: ModelServer, features: np.ndarray, champion_model: TinyModel
) -> None:
    prediction = server.predict(MODEL_NAME, features[:64])
    assert prediction.probability_up.dtype == np.float32
    assert prediction.probability_up.shape == (64,)
    np.testing.assert_allclose(
        prediction.probability_up, champion_model.probabilities(features[:64]), atol=1e-6
    )
    assert prediction.model.version == 1


@pytest.mark.parametrize(
    ("bad", "message_parts"),
    [
        (np.zeros((2, 4), np.float64), ["expects datatype FP32", "[N, 4]", "got FP64"]),
        (np.zeros((2, 4), np.int32), ["expects datatype FP32", "got INT32"]),
        (np.zeros((2, 3), np.float32), ["expects shape [N, 4]", "FP32", "got [2, 3]"]),
        (np.zeros(4, np.float32), ["expects shape [N, 4]", "got [4]"]),
        (np.zeros((0, 4), np.float32), ["N >= 1", "got [0, 4]"]),
        ([[0.0, 0.0, 0.0, 0.0]], ["expects FP32 [N, 4]"]),
    ],
    ids=["fp64", "int32", "wrong-width", "one-dimensional", "no-rows", "not-an-array"],
)
def test_predict_when_features_malformed_raises_invalid_argument_naming_expectation(
    server: ModelServer, bad: object, message_parts: list[str]
) -> None:
    with pytest.raises(InvalidArgument) as raised:
        server.predict(MODEL_NAME, bad)
    for part in message_parts:
        assert part in str(raised.value)


def test_predict_when_a_feature_is_nan_names_row_and_feature(
    server: ModelServer, features: np.ndarray
) -> None:
    rows = features[:3].copy()
    rows[2, 2] = np.nan
    with pytest.raises(InvalidArgument, match=r"row 2, column 2 \('volatility_20'\) is nan"):
        server.predict(MODEL_NAME, rows)


def test_model_when_name_or_version_unknown_raises_not_found(server: ModelServer) -> None:
    with pytest.raises(NotFound, match=f"'other' is not served; served models: {MODEL_NAME}"):
        server.model("other")
    with pytest.raises(NotFound, match="no version 9"):
        server.model(MODEL_NAME, "9")
    with pytest.raises(NotFound, match="no alias 'staging'"):
        server.model(MODEL_NAME, "staging")


def test_model_by_version_or_alias_loads_that_version_beside_the_primary(
    server: ModelServer,
) -> None:
    assert server.model(MODEL_NAME).version == 1
    assert server.model(MODEL_NAME, "1") is server.model(MODEL_NAME)
    assert server.model(MODEL_NAME, "champion") is server.model(MODEL_NAME)
    pinned = server.model(MODEL_NAME, "2")
    assert pinned.version == 2
    assert server.model(MODEL_NAME, "challenger") is pinned  # loaded once
    assert [m.version for m in server.served] == [1]


def test_pinned_versions_are_bounded(
    registry: ModelRegistry, server: ModelServer, champion_model: TinyModel
) -> None:
    for l2 in range(MAX_PINNED_VERSIONS + 2):
        weights = champion_model.weights * (1 + l2 / 10)
        variant = TinyModel(logistic_onnx(weights, 0.0), champion_model.feature_names, weights, 0)
        register_tiny_model(registry, MODEL_NAME, variant)
    for version in range(2, MAX_PINNED_VERSIONS + 5):
        assert server.model(MODEL_NAME, str(version)).version == version
    assert len(server._pinned) == MAX_PINNED_VERSIONS


def test_serve_accepts_name_alias_and_version_refs(registry: ModelRegistry) -> None:
    server = ModelServer(registry)
    assert server.serve(MODEL_NAME).model.alias == "champion"
    assert server.serve(f"{MODEL_NAME}@challenger").model.version == 2
    pinned = server.serve(f"{MODEL_NAME}:1").model
    assert (pinned.version, pinned.alias) == (1, "")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, InvalidArgument, "exactly one of alias or version"),
        ({"alias": "champion", "version": 2}, InvalidArgument, "exactly one"),
        ({"version": "two"}, InvalidArgument, "registry version number"),
        ({"version": 0}, InvalidArgument, "1 or more"),
        ({"alias": "staging"}, NotFound, "no alias 'staging'"),
    ],
)
def test_switch_when_target_bad_raises_and_keeps_serving(
    server: ModelServer, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        server.switch(MODEL_NAME, **kwargs)  # type: ignore[arg-type]
    assert server.model(MODEL_NAME).version == 1


def test_switch_swaps_after_loading_and_in_flight_holders_keep_their_model(
    server: ModelServer, features: np.ndarray
) -> None:
    in_flight = server.model(MODEL_NAME)
    switched = server.switch(MODEL_NAME, alias="challenger")
    assert switched.previous is in_flight
    assert server.model(MODEL_NAME) is switched.model
    assert switched.model.version == 2
    # A request that looked the old model up before the swap still completes on it.
    assert in_flight.predict(features[:1]).shape == (1,)


def test_switch_to_the_same_artifact_reuses_the_session(server: ModelServer) -> None:
    before = server.model(MODEL_NAME)
    after = server.switch(MODEL_NAME, version=1).model
    assert after._session is before._session
    assert (after.alias, before.alias) == ("", "champion")


def test_switches_while_predicting_from_another_thread_fail_no_prediction(
    server: ModelServer, features: np.ndarray
) -> None:
    errors: list[BaseException] = []
    versions: set[int] = set()
    done = threading.Event()

    def predict_forever() -> None:
        i = 0
        while not done.is_set():
            try:
                versions.add(server.predict(MODEL_NAME, features[i : i + 1]).model.version)
            except BaseException as error:
                errors.append(error)
            i = (i + 1) % len(features)

    worker = threading.Thread(target=predict_forever)
    worker.start()
    for alias in ("challenger", "champion") * 3:
        server.switch(MODEL_NAME, alias=alias)
    done.set()
    worker.join()
    assert errors == []
    assert versions == {1, 2}


def test_refresh_follows_a_moved_alias_and_survives_a_deleted_one(
    registry: ModelRegistry, server: ModelServer
) -> None:
    assert server.refresh() == []
    registry.set_alias(MODEL_NAME, "champion", 2)
    (switched,) = server.refresh()
    assert (switched.model.version, switched.previous and switched.previous.version) == (2, 1)
    registry.delete_alias(MODEL_NAME, "champion")
    assert server.refresh() == []
    assert server.model(MODEL_NAME).version == 2


def test_load_when_artifact_is_not_onnx_raises_failed_precondition(
    registry: ModelRegistry,
) -> None:
    registry.register(
        "broken",
        b"not an onnx model",
        feature_names=["log_return_1"],
        metrics={},
        data_from_ms=0,
        data_to_ms=1,
        aliases=["champion"],
    )
    with pytest.raises(FailedPrecondition, match="cannot be loaded by ONNX Runtime"):
        ModelServer(registry).serve("broken")


def test_load_when_input_width_differs_from_feature_names_raises_failed_precondition(
    registry: ModelRegistry, champion_model: TinyModel
) -> None:
    registry.register(
        "mismatch",
        champion_model.onnx_bytes,
        feature_names=["log_return_1", "log_return_4"],
        metrics={},
        data_from_ms=0,
        data_to_ms=1,
        aliases=["champion"],
    )
    with pytest.raises(FailedPrecondition, match=r"FP32 \[N, 4\]; it must be FP32 \[N, 2\]"):
        ModelServer(registry).serve("mismatch")


def test_load_when_features_not_in_the_stream_raises_failed_precondition(
    registry: ModelRegistry,
) -> None:
    server = ModelServer(registry, stream_feature_names=["log_return_1", "zscore_20"])
    with pytest.raises(FailedPrecondition, match="log_return_4, volatility_20"):
        server.serve(MODEL_NAME)


def test_classify_is_up_from_one_half_and_unspecified_for_nan() -> None:
    classes = classify(np.array([0.0, 0.4999, 0.5, 0.93, np.nan]))
    assert classes.tolist() == [
        PredictedClass.DOWN,
        PredictedClass.DOWN,
        PredictedClass.UP,
        PredictedClass.UP,
        PredictedClass.UNSPECIFIED,
    ]
