"""Prediction batches as the recorder stores them: decoded, named, joined."""

from __future__ import annotations

import numpy as np
import pytest

from quantmesh.inference.v1 import inference_pb2
from quantmesh.services.recorder.core import SeqBuffer, concat_predictions
from quantmesh.services.recorder.job import prediction_rows_of_batch, prediction_stream_key
from quantmesh.storage.timeseries import PredictionRows


def batch(versions: tuple[str, str] = ("3", "12")) -> inference_pb2.PredictionBatch:
    return inference_pb2.PredictionBatch(
        seq=40,
        symbols=["GBPUSD", "EURUSD"],
        symbol_index=[1, 0, 1],
        time_msc=[1_000, 1_000, 2_000],
        models=[
            inference_pb2.ModelRef(name="a", version=versions[0], alias="champion"),
            inference_pb2.ModelRef(name="b", version=versions[1]),
        ],
        model_index=[0, 1, 1],
        probability_up=[0.75, float("nan"), 0.25],
        predicted_class=[
            inference_pb2.PREDICTED_CLASS_UP,
            inference_pb2.PREDICTED_CLASS_UNSPECIFIED,
            inference_pb2.PREDICTED_CLASS_DOWN,
        ],
        feature_digest=[2**64 - 1, 5, 6],
        feature_seq=[20, 20, 21],
    )


def labels(rows: PredictionRows) -> list[tuple[str, int, str]]:
    return [
        (rows.models[m], rows.versions[m], rows.symbols[s])
        for m, s in zip(rows.model_index, rows.symbol_index, strict=True)
    ]


def test_a_batch_decodes_to_rows_with_registry_versions() -> None:
    seq, rows = prediction_rows_of_batch(batch())

    assert seq == 40
    assert labels(rows) == [("a", 3, "EURUSD"), ("b", 12, "GBPUSD"), ("b", 12, "EURUSD")]
    assert rows.time_msc.tolist() == [1_000, 1_000, 2_000]
    np.testing.assert_array_equal(rows.probability_up, [0.75, np.nan, 0.25])
    assert rows.predicted_class.tolist() == [3, 0, 1]
    assert rows.feature_digest.tolist() == [2**64 - 1, 5, 6]


def test_a_version_that_is_not_a_number_is_refused_naming_the_model() -> None:
    with pytest.raises(ValueError, match="model a came with version 'champion'"):
        prediction_rows_of_batch(batch(("champion", "1")))


def test_the_stream_is_named_by_symbols_and_the_models_in_their_order() -> None:
    assert prediction_stream_key(["GBPUSD", "EURUSD"], ()) == "EURUSD,GBPUSD|*"
    assert prediction_stream_key(["EURUSD"], ("b", "a")) == "EURUSD|b,a"


def test_batches_join_over_their_model_and_symbol_dictionaries() -> None:
    _, first = prediction_rows_of_batch(batch())
    second = PredictionRows.of(
        ["b", "c"], [12, 1], ["USDJPY", "EURUSD"], [3, 4], [0.5, 0.5], [2, 2], [7, 8]
    )
    buffer = SeqBuffer(40, 10, 1.0, concat_predictions, what="predictions")
    buffer.add(40, first)
    buffer.add(43, second)

    block = buffer.block()

    assert len(block) == 5
    assert labels(block) == [*labels(first), ("b", 12, "USDJPY"), ("c", 1, "EURUSD")]
    assert block.feature_digest.tolist() == [2**64 - 1, 5, 6, 7, 8]
    assert (buffer.first_seq, buffer.next_seq) == (40, 45)
    with pytest.raises(ValueError, match="predictions out of order: expected seq 45"):
        buffer.add(46, second)
