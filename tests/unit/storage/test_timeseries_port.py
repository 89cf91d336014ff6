"""The timeseries port's value types and their Arrow form (no engine involved)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from quantmesh.inference.v1 import inference_pb2
from quantmesh.storage.timeseries import AccuracyRow, PredictedClass, PredictionRows, TickRows
from quantmesh.storage.timeseries.sql import (
    PREDICTION_COLUMNS,
    TICK_COLUMNS,
    prediction_table,
    tick_table,
)


def test_tick_rows_of_plain_columns_dictionary_encode_the_symbol() -> None:
    rows = TickRows.of(
        ["GBPUSD", "EURUSD", "GBPUSD"], [1, 2, 3], [10, 11, 12], [12, 13, 14], [1, 2, 3]
    )

    assert rows.symbols == ("EURUSD", "GBPUSD")
    assert rows.symbol_index.tolist() == [1, 0, 1]
    assert rows.symbol().tolist() == ["GBPUSD", "EURUSD", "GBPUSD"]
    assert len(rows) == 3
    assert rows.rows(1, 3).symbol().tolist() == ["EURUSD", "GBPUSD"]
    assert rows.rows(1, 3).bid.tolist() == [11, 12]


def test_tick_rows_refuse_columns_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        TickRows.of(["EURUSD"] * 2, [1, 2], [10], [12, 13], [1, 1])


def test_tick_rows_refuse_an_index_past_the_symbols() -> None:
    one = np.ones(1, dtype=np.int64)
    with pytest.raises(ValueError, match="only 1 symbols"):
        TickRows(("EURUSD",), np.array([1], dtype=np.uint32), one, one, one, one * 1.0)


def test_prediction_rows_of_plain_columns_pair_models_with_versions() -> None:
    rows = PredictionRows.of(
        model=["b", "a", "b"],
        version=[2, 1, 3],
        symbol=["EURUSD"] * 3,
        time_msc=[1, 2, 3],
        probability_up=[0.6, 0.4, 0.5],
        predicted_class=[3, 1, 3],
        feature_digest=[2**64 - 1, 0, 5],
    )

    assert list(zip(rows.models, rows.versions, strict=True)) == [("a", 1), ("b", 2), ("b", 3)]
    assert rows.model_index.tolist() == [1, 0, 2]
    assert rows.feature_digest.dtype == np.uint64
    assert int(rows.feature_digest[0]) == 2**64 - 1


def test_prediction_rows_need_a_version_for_each_model() -> None:
    with pytest.raises(ValueError, match="needs its version"):
        PredictionRows(
            ("m",), (), *(np.zeros(0, dtype=np.uint32),), ("EURUSD",), *([np.zeros(0)] * 5)
        )


def test_predicted_class_numbers_are_the_contract_s() -> None:
    for member in PredictedClass:
        assert inference_pb2.PredictedClass.Value(f"PREDICTED_CLASS_{member.name}") == int(member)


def test_accuracy_is_correct_over_scored_and_nan_when_nothing_was_scored() -> None:
    assert AccuracyRow("m", 1, 0, predictions=5, scored=4, correct=3).accuracy == 0.75
    assert math.isnan(AccuracyRow("m", 1, 0, predictions=5, scored=0, correct=0).accuracy)


def test_tick_table_numbers_rows_from_the_first_seq_in_the_table_s_column_order() -> None:
    rows = TickRows.of(["EURUSD", "GBPUSD"], [1, 2], [10, 20], [12, 22], [0.5, 1.5])

    table = tick_table("EURUSD,GBPUSD", 41, rows)

    assert tuple(table.column_names) == TICK_COLUMNS
    assert table.column("seq").to_pylist() == [41, 42]
    assert table.column("seq").type == pa.uint64()
    assert table.column("stream").to_pylist() == ["EURUSD,GBPUSD"] * 2
    assert table.column("symbol").to_pylist() == ["EURUSD", "GBPUSD"]
    assert pa.types.is_dictionary(table.column("symbol").type)
    assert table.column("volume").to_pylist() == [0.5, 1.5]


def test_prediction_table_gives_the_engine_distinct_dictionary_values() -> None:
    # One model at two versions: the model dictionary must hold its name once.
    rows = PredictionRows.of(["m", "m"], [1, 2], ["EURUSD"] * 2, [1, 1], [0.7, 0.2], [3, 1], [1, 2])

    table = prediction_table(rows)

    assert tuple(table.column_names) == PREDICTION_COLUMNS
    model = table.column("model").combine_chunks()
    assert model.dictionary.to_pylist() == ["m"]
    assert model.to_pylist() == ["m", "m"]
    assert table.column("version").to_pylist() == [1, 2]
    assert table.column("predicted_class").type == pa.uint8()
