"""ONNX export: raw features in, P(up) out, equal to torch, dynamic batch, deterministic."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from quantmesh.services.trainer.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    export_onnx,
    onnx_predict,
    verify_onnx,
)
from quantmesh.services.trainer.model import DirectionNet, HyperParams, fit_direction_model


@pytest.fixture(scope="module")
def trained(synthetic: Any) -> tuple[DirectionNet, np.ndarray, tuple[str, ...]]:
    data = synthetic(rows=800, numbered=False)
    hp = HyperParams(hidden=(16, 8), max_epochs=5, patience=5, batch_size=64)
    fit = fit_direction_model(data.X, data.y, data.times, data.label_times, hp, seed=5)
    return fit.model, data.X, data.feature_names


def test_onnx_output_equals_torch_output_on_raw_features(trained: Any) -> None:
    model, X, names = trained
    onnx_bytes = export_onnx(model, names)
    with torch.no_grad():
        expected = model(torch.as_tensor(X)).numpy()
    got = onnx_predict(onnx_bytes, X)
    assert got.dtype == np.float32
    assert got.shape == (len(X), 1)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    assert verify_onnx(onnx_bytes, model, X) <= 1e-6
    assert 0.0 < got.min() < got.max() < 1.0


@pytest.mark.parametrize("batch", [1, 3, 1_000])
def test_the_batch_dimension_is_dynamic(trained: Any, batch: int) -> None:
    model, X, names = trained
    onnx_bytes = export_onnx(model, names)
    rows = np.resize(X, (batch, X.shape[1]))
    assert onnx_predict(onnx_bytes, rows).shape == (batch, 1)
    verify_onnx(onnx_bytes, model, rows)


def test_the_graph_declares_its_names_shapes_and_feature_schema(trained: Any) -> None:
    model, _, names = trained
    proto = onnx.load_from_string(export_onnx(model, names, {"horizon_bars": "1"}))
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert inp.name == INPUT_NAME == "features"
    assert out.name == OUTPUT_NAME == "probability_up"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    in_dims = inp.type.tensor_type.shape.dim
    out_dims = out.type.tensor_type.shape.dim
    assert (in_dims[0].dim_param, in_dims[1].dim_value) == ("batch", len(names))
    assert (out_dims[0].dim_param, out_dims[1].dim_value) == ("batch", 1)
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata["feature_names"]) == list(names)
    assert metadata["horizon_bars"] == "1"


def test_the_scaler_is_baked_into_the_graph(trained: Any) -> None:
    model, X, names = trained
    onnx_bytes = export_onnx(model, names)
    mean = model.get_buffer("mean").numpy()
    std = model.get_buffer("std").numpy()
    assert np.abs(mean).max() > 0.5 or np.abs(std - 1).max() > 0.5  # scaling matters here
    with torch.no_grad():
        by_hand = torch.sigmoid(model.body(torch.as_tensor((X - mean) / std))).numpy()
    np.testing.assert_allclose(onnx_predict(onnx_bytes, X), by_hand, atol=1e-6, rtol=0)


def test_the_same_weights_export_to_the_same_bytes(trained: Any) -> None:
    model, _, names = trained
    assert export_onnx(model, names) == export_onnx(model, names)


def test_verification_fails_for_a_different_model(trained: Any) -> None:
    model, X, names = trained
    onnx_bytes = export_onnx(model, names)
    other = DirectionNet(np.zeros(len(names)), np.ones(len(names)), (16, 8), 0.0)
    with pytest.raises(AssertionError, match="differs from torch"):
        verify_onnx(onnx_bytes, other, X)
