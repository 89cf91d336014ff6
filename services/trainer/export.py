"""ONNX export of a :class:`DirectionNet`, verified against torch with ONNX Runtime.

The graph takes ``features`` (float32 ``[batch, n_features]``, raw: the scaler is
inside) and returns ``probability_up`` (float32 ``[batch, 1]``), with a dynamic batch
dimension named ``batch``. The model's metadata carries the feature names and the
horizon, so an artifact describes its own inputs.

Exporter choice: torch 2.13 defaults to the torch.export-based ("dynamo") exporter,
which needs ``onnxscript``, takes seconds per export and logs warnings. We use the
TorchScript exporter (``dynamo=False``): it needs nothing beyond torch, runs in
milliseconds offline and writes the same bytes for the same weights, so a rerun with the
same seed registers the same content hash. Its deprecation warning is silenced here;
every export is checked by :func:`verify_onnx` either way.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Mapping

import numpy as np
import onnx
import torch

from quantmesh.services.trainer.model import DirectionNet

__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "export_onnx", "onnx_predict", "verify_onnx"]

INPUT_NAME = "features"
OUTPUT_NAME = "probability_up"
OPSET = 17
TOLERANCE = 1e-5  # float32 kernels of torch and ONNX Runtime differ in the last bits


def export_onnx(
    model: DirectionNet, feature_names: tuple[str, ...], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Serialize ``model`` (in eval mode) to ONNX bytes.

    Parameters
    ----------
    model:
        The trained model; its scaler buffers are baked into the graph.
    feature_names:
        The input columns, stored as JSON in the ``feature_names`` metadata entry.
    metadata:
        Further string metadata (e.g. ``horizon_bars``), sorted into the model.
    """
    model.eval()
    example = torch.zeros(2, len(feature_names), dtype=torch.float32)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model,
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to files too
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    entries = {"feature_names": json.dumps(list(feature_names))} | dict(metadata or {})
    for key in sorted(entries):
        proto.metadata_props.add(key=key, value=entries[key])
    proto.doc_string = "P(up) of the next move from raw features; scaler inside the graph."
    onnx.checker.check_model(proto)
    return bytes(proto.SerializeToString(deterministic=True))


def onnx_predict(onnx_bytes: bytes, X: np.ndarray) -> np.ndarray:
    """Run the artifact in ONNX Runtime (CPU, one thread) on raw features ``X``."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(X, np.float32)})
    return np.asarray(out)


def verify_onnx(onnx_bytes: bytes, model: DirectionNet, X: np.ndarray) -> float:
    """Check that the artifact reproduces ``model`` on ``X``; return the max abs difference.

    Raises
    ------
    AssertionError
        If the names, shapes or values differ (beyond :data:`TOLERANCE`).
    """
    proto = onnx.load_from_string(onnx_bytes)
    (graph_input,) = proto.graph.input
    (graph_output,) = proto.graph.output
    if (graph_input.name, graph_output.name) != (INPUT_NAME, OUTPUT_NAME):
        raise AssertionError(f"unexpected ONNX names {graph_input.name}, {graph_output.name}")
    onnx_out = onnx_predict(onnx_bytes, X)
    model.eval()
    with torch.no_grad():
        torch_out = model(torch.as_tensor(X, dtype=torch.float32)).numpy()
    if onnx_out.shape != torch_out.shape or onnx_out.shape != (len(X), 1):
        raise AssertionError(f"ONNX output shape {onnx_out.shape}, torch {torch_out.shape}")
    diff = float(np.max(np.abs(onnx_out.astype(np.float64) - torch_out))) if len(X) else 0.0
    if not diff <= TOLERANCE:
        raise AssertionError(f"ONNX output differs from torch by {diff:.3g} > {TOLERANCE}")
    return diff
