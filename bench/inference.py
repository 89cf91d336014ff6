"""Inference latency and throughput: in process (ONNX Runtime) and over gRPC (KServe v2).

The model is the tiny logistic direction model of
:mod:`quantmesh.services.inference.testing`, fitted on the shipped EUR/USD bars and
registered in a temporary registry; the inputs are real feature rows of that data. Each
latency row times ``CALLS`` single calls with ``time.perf_counter_ns`` after ``WARMUP``
untimed ones. The gRPC rows call a server running in its own process
(``quantmesh serve inference``, as in production) from a synchronous grpc client, one
request in flight at a time, through a cache-enabled server with distinct rows, so every
call is a cache miss that runs the session.

Targets (DESIGN.md): one inference in process p99 <= 100 µs; over gRPC p99 <= 1 ms.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from quantmesh.bench.harness import service_process
from quantmesh.inference.v1 import open_inference_pb2 as oip
from quantmesh.inference.v1 import open_inference_pb2_grpc
from quantmesh.services.inference.core import ModelServer
from quantmesh.services.inference.testing import (
    MODEL_NAME,
    direction_dataset,
    register_tiny_model,
    train_direction_model,
)
from quantmesh.services.registry.core import ModelRegistry

WARMUP = 500
CALLS = 10_000
BATCH = 64
BATCH_CALLS = 2_000
IN_PROCESS_P99_TARGET_US = 100
GRPC_P99_TARGET_US = 1_000


def _timed(call: Callable[[int], object], calls: int) -> np.ndarray:
    """Nanoseconds of ``call(i)`` for ``i`` in ``range(calls)``, after a warm-up."""
    for i in range(WARMUP):
        call(i)
    took = np.empty(calls, np.int64)
    clock = time.perf_counter_ns
    for i in range(calls):
        start = clock()
        call(WARMUP + i)
        took[i] = clock() - start
    return took


def _row(path: str, batch: int, took: np.ndarray, target_us: int | None) -> dict[str, Any]:
    p50, p99 = (float(np.percentile(took, q)) / 1_000 for q in (50, 99))
    return {
        "path": path,
        "batch": batch,
        "calls": len(took),
        "p50_us": round(p50, 1),
        "p99_us": round(p99, 1),
        "rows_per_s": round(batch * len(took) / (took.sum() / 1e9)),
        "p99_target_us": target_us if target_us is not None else "",
        "meets_target": "" if target_us is None else ("yes" if p99 <= target_us else "NO"),
    }


def _request(rows: np.ndarray, raw: bool) -> oip.ModelInferRequest:
    tensor = oip.ModelInferRequest.InferInputTensor(
        name="features", datatype="FP32", shape=rows.shape
    )
    request = oip.ModelInferRequest(model_name=MODEL_NAME, inputs=[tensor])
    if raw:
        request.raw_input_contents.append(rows.astype("<f4").tobytes())
    else:
        tensor = request.inputs[0]
        tensor.contents.fp32_contents.extend(rows.ravel().tolist())
    return request


def _in_process(registry: ModelRegistry, features: np.ndarray) -> list[dict[str, Any]]:
    n = len(features)
    uncached = ModelServer(registry, cache_size=0)
    model = uncached.serve(MODEL_NAME).model
    cached = ModelServer(registry)
    cached.serve(MODEL_NAME)
    singles = [features[i : i + 1] for i in range(n)]
    one = singles[0]
    batches = [features[i : i + BATCH] for i in range(0, n - BATCH, BATCH)]
    target = IN_PROCESS_P99_TARGET_US
    return [
        _row(
            "in process: session run only",
            1,
            _timed(lambda i: model.predict(singles[i % n]), CALLS),
            target,
        ),
        _row(
            "in process: ModelServer.predict, cache miss",
            1,
            _timed(lambda i: uncached.predict(MODEL_NAME, singles[i % n]), CALLS),
            target,
        ),
        _row(
            "in process: ModelServer.predict, cache hit",
            1,
            _timed(lambda i: cached.predict(MODEL_NAME, one), CALLS),
            target,
        ),
        _row(
            "in process: ModelServer.predict, cache miss",
            BATCH,
            _timed(lambda i: uncached.predict(MODEL_NAME, batches[i % len(batches)]), BATCH_CALLS),
            None,
        ),
    ]


def _production_model(registry: ModelRegistry) -> list[dict[str, Any]]:
    """Batch-1 latency of the model ``quantmesh train`` makes (an MLP), if torch is here."""
    try:
        from quantmesh.services.trainer.pipeline import TrainConfig, train_model
    except ImportError:  # torch comes with the `train` extra
        return []
    result = train_model(TrainConfig(model_name="eurusd-h1-mlp", folds=2), registry)
    assert result.model_version is not None
    server = ModelServer(registry, cache_size=0)
    model = server.serve(f"{result.model_version.name}@champion").model
    rows = result.data.X.astype(np.float32)
    singles = [rows[i : i + 1] for i in range(len(rows))]
    n = len(singles)
    took = _timed(lambda i: model.predict(singles[i % n]), CALLS)
    return [_row("in process: trained MLP, session run only", 1, took, IN_PROCESS_P99_TARGET_US)]


def _calling(
    infer: Callable[[oip.ModelInferRequest], object], requests: list[oip.ModelInferRequest]
) -> Callable[[int], object]:
    return lambda i: infer(requests[i % len(requests)])


def _over_grpc(address: str, features: np.ndarray) -> list[dict[str, Any]]:
    n = len(features)
    rows: list[dict[str, Any]] = []
    with grpc.insecure_channel(address) as channel:
        stub = open_inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        infer = stub.ModelInfer
        # The transport's floor on this machine: a unary call that does no work.
        live = oip.ServerLiveRequest()
        took = _timed(lambda i: stub.ServerLive(live), CALLS)
        rows.append(_row("gRPC ServerLive (no model: the floor)", 1, took, None))
        # Requests are built up front: the figure is the call, not building the request.
        for raw, kind in ((False, "fp32_contents"), (True, "raw_input_contents")):
            requests = [_request(features[i : i + 1], raw) for i in range(n)]
            took = _timed(_calling(infer, requests), CALLS)
            rows.append(_row(f"gRPC ModelInfer ({kind})", 1, took, GRPC_P99_TARGET_US))
        batches = [_request(features[i : i + BATCH], True) for i in range(0, n - BATCH, BATCH)]
        took = _timed(_calling(infer, batches), BATCH_CALLS)
        rows.append(_row("gRPC ModelInfer (raw_input_contents)", BATCH, took, None))
    return rows


def run() -> dict[str, Any]:
    """Measure batch-1 latency in process and over gRPC, and batch-64 throughput."""
    features = direction_dataset()[0].astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="quantmesh-bench-") as tmp:
        root = Path(tmp) / "registry"
        registry = ModelRegistry(root)
        register_tiny_model(registry, MODEL_NAME, train_direction_model(), ["champion"])
        rows = _in_process(registry, features) + _production_model(registry)
        env = {
            "QUANTMESH_INFERENCE_REGISTRY_ROOT": str(root),
            "QUANTMESH_INFERENCE_MODEL_REFS": f"{MODEL_NAME}@champion",
            "QUANTMESH_INFERENCE_ALIAS_POLL_SECONDS": "0",
            "QUANTMESH_INFERENCE_LOG_LEVEL": "WARNING",
        }
        with service_process("inference", env=env) as service:
            rows += _over_grpc(service.address, features)
            memory = {"server_rss_mb": round(service.rss_mb(), 1)}
    return {"name": "inference.latency", "rows": rows, "memory": memory}
