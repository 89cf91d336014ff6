"""Inference core: ONNX Runtime sessions of registry models, a prediction cache, switching.

No grpc here. The servicers convert protobuf to these calls and map the
:mod:`quantmesh.runtime.errors` they raise to gRPC statuses.

A :class:`ModelServer` serves one *primary* version per model name. It is read by every
request without a lock: a request looks its model up once and keeps that
:class:`LoadedModel` until it answers, so :meth:`ModelServer.switch` can build and warm
the new session first and then swap one dict entry. No request waits for a load, and no
in-flight request loses its session: the old one is freed when its last user is done.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import onnxruntime as ort  # type: ignore[import-untyped]  # ships no py.typed

from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from quantmesh.services.inference.cache import PredictionCache, feature_digests, row_digest
from quantmesh.services.registry.core import ModelRegistry, ModelVersion

PLATFORM = "onnxruntime_onnx"
DEFAULT_ALIAS = "champion"
# The output read as P(up) when a model has several; otherwise its only output.
PROBABILITY_OUTPUT = "probability_up"
# Binary direction models: p >= 0.5 is UP, anything lower DOWN. FLAT is never predicted
# by them; a model with a no-move band would publish it as an extra output.
UP_THRESHOLD = 0.5
# Versions other than the primaries loaded on demand (model_version "2" over OIP); bounded
# so that a client cycling through versions cannot exhaust memory.
MAX_PINNED_VERSIONS = 4

# ONNX Runtime's element types in the Open Inference Protocol's datatype names.
ORT_DATATYPES = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}
NUMPY_DATATYPES = {
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
    np.dtype(np.int64): "INT64",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int16): "INT16",
    np.dtype(np.int8): "INT8",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.bool_): "BOOL",
}


class PredictedClass(IntEnum):
    """Predicted direction; numbers match the contract's ``PredictedClass``."""

    UNSPECIFIED = 0
    DOWN = 1
    FLAT = 2
    UP = 3


def classify(probability_up: np.ndarray) -> np.ndarray:
    """Classes of probabilities: UP for p >= 0.5, DOWN below, UNSPECIFIED for NaN."""
    classes = np.where(probability_up >= UP_THRESHOLD, PredictedClass.UP, PredictedClass.DOWN)
    classes[np.isnan(probability_up)] = PredictedClass.UNSPECIFIED
    return classes.astype(np.int32)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output: name, Open Inference Protocol datatype, shape (-1 = any)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def describe(self) -> str:
        dims = ", ".join("N" if dim < 0 else str(dim) for dim in self.shape)
        return f"{self.datatype} [{dims}]"


def _spec(node: ort.NodeArg) -> TensorSpec:
    # Symbolic or unknown dimensions (e.g. "batch") are variable: -1 in the protocol.
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in node.shape)
    return TensorSpec(node.name, ORT_DATATYPES.get(node.type, node.type), shape)


def session_options() -> ort.SessionOptions:
    """One thread, sequential, all graph optimizations: the lowest batch-1 latency.

    Small models gain nothing from intra-op parallelism, and spinning worker threads
    would compete with the event loop for this machine's two cores.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


class LoadedModel:
    """One registry version in an ONNX Runtime session, checked and warmed up.

    Parameters
    ----------
    record:
        The registry's record of the version.
    artifact:
        The ONNX bytes (already verified against ``record.sha256`` by the registry).
    alias:
        The alias it is served through, or "" when pinned by version.

    Raises
    ------
    FailedPrecondition
        When ONNX Runtime cannot load the artifact, or its tensors are not one FP32
        ``[N, k]`` input and an FP32 ``[N, 1]`` or ``[N]`` probability output with ``k``
        the number of the version's feature names.
    """

    def __init__(self, record: ModelVersion, artifact: bytes, alias: str = "") -> None:
        self.record = record
        self.alias = alias
        self.label = f"{record.name}:{record.version}"
        try:
            self._session = ort.InferenceSession(
                artifact, sess_options=session_options(), providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # ORT raises its own pybind exception types
            raise FailedPrecondition(
                f"model {self.label} cannot be loaded by ONNX Runtime: {error}"
            ) from error
        self.inputs = tuple(_spec(node) for node in self._session.get_inputs())
        self.outputs = tuple(_spec(node) for node in self._session.get_outputs())
        self.input, self.probability = self._check_signature()
        self.n_features = self.input.shape[1]
        self.loaded_ms = int(time.time() * 1000)
        # Warm up: ORT allocates and plans on the first run; no caller should pay that.
        self.predict(np.zeros((1, self.n_features), np.float32))
        self.ready = True

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def version(self) -> int:
        return self.record.version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.record.feature_names)

    def with_alias(self, alias: str) -> LoadedModel:
        """The same session, served through another alias (no reload)."""
        clone = copy.copy(self)  # shallow: the session is shared, never copied
        clone.alias = alias
        return clone

    def _check_signature(self) -> tuple[TensorSpec, TensorSpec]:
        if len(self.inputs) != 1:
            raise FailedPrecondition(
                f"model {self.label} must have one input tensor, it has {len(self.inputs)}"
            )
        (tensor,) = self.inputs
        k = len(self.record.feature_names)
        if tensor.datatype != "FP32" or len(tensor.shape) != 2 or tensor.shape[1] != k:
            raise FailedPrecondition(
                f"model {self.label} input {tensor.name!r} is {tensor.describe()}; it must be "
                f"FP32 [N, {k}], one column per registered feature name"
            )
        by_name = {spec.name: spec for spec in self.outputs}
        probability = by_name.get(PROBABILITY_OUTPUT, self.outputs[0])
        if probability.datatype != "FP32" or probability.shape[1:] not in ((), (1,)):
            raise FailedPrecondition(
                f"model {self.label} output {probability.name!r} is {probability.describe()}; "
                "the probability output must be FP32 [N, 1] or [N]"
            )
        return tensor, probability

    def check(self, features: object) -> np.ndarray:
        """Validate a feature matrix for this model and return it.

        Raises
        ------
        InvalidArgument
            For anything but a finite FP32 array of shape ``[N, k]``, N >= 1; the
            message names the expected shape and datatype and what was given.
        """
        expected = f"FP32 [N, {self.n_features}]"
        if not isinstance(features, np.ndarray):
            raise InvalidArgument(f"model {self.label} expects {expected} features")
        if features.dtype != np.float32:
            got = NUMPY_DATATYPES.get(features.dtype, str(features.dtype))
            raise InvalidArgument(
                f"model {self.label} input {self.input.name!r} expects datatype FP32 "
                f"(shape [N, {self.n_features}]), got {got}"
            )
        if features.ndim != 2 or features.shape[1] != self.n_features or features.shape[0] < 1:
            raise InvalidArgument(
                f"model {self.label} input {self.input.name!r} expects shape "
                f"[N, {self.n_features}] with N >= 1 (datatype FP32), got {list(features.shape)}"
            )
        finite = np.isfinite(features)
        if not finite.all():
            row, column = (int(i) for i in np.argwhere(~finite)[0])
            raise InvalidArgument(
                f"model {self.label} features must be finite: row {row}, column {column} "
                f"({self._column_name(column)}) is {features[row, column]}"
            )
        return features

    def _column_name(self, column: int) -> str:
        names = self.record.feature_names
        return repr(names[column]) if column < len(names) else "unnamed"

    def predict(self, features: np.ndarray) -> np.ndarray:
        """P(up) of each row of a checked FP32 ``[N, k]`` matrix, as FP32 ``[N]``.

        Call :meth:`check` first for untrusted input; this runs the session as is.
        """
        (result,) = self._session.run([self.probability.name], {self.input.name: features})
        probabilities: np.ndarray = np.asarray(result, np.float32).reshape(-1)
        return probabilities

    def run(self, features: np.ndarray, outputs: Sequence[str]) -> list[np.ndarray]:
        """Named outputs of the session for a checked feature matrix (every output kind)."""
        results = self._session.run(list(outputs), {self.input.name: features})
        return [np.asarray(result) for result in results]


@dataclass(frozen=True, slots=True)
class Prediction:
    """Probabilities of a batch of rows by one model version."""

    model: LoadedModel
    probability_up: np.ndarray  # FP32 [N]
    feature_digest: np.ndarray  # uint64 [N]
    cached: np.ndarray  # bool [N]: the row's answer came from the cache

    @property
    def cache_hits(self) -> int:
        return int(self.cached.sum())


@dataclass(frozen=True, slots=True)
class Switched:
    """Outcome of :meth:`ModelServer.switch`."""

    model: LoadedModel
    previous: LoadedModel | None


class ModelServer:
    """Serve registry models: one primary version per name, a cache, atomic switches.

    Parameters
    ----------
    registry:
        Where versions, aliases and verified artifacts come from.
    cache_size:
        Predictions kept in the in-process LRU cache; 0 disables it.
    stream_feature_names:
        Columns of the feature stream. When given, a model whose feature names are not
        all among them is refused (FAILED_PRECONDITION): it could never be streamed.
    cache:
        The prediction cache to use instead of an in-process one of ``cache_size``
        entries, e.g. one in front of a shared store (Redis, Dragonfly).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        cache_size: int = 100_000,
        stream_feature_names: Collection[str] | None = None,
        cache: PredictionCache | None = None,
    ) -> None:
        self.registry = registry
        self.cache = cache if cache is not None else PredictionCache(cache_size)
        self._stream_features = None if stream_feature_names is None else set(stream_feature_names)
        self._primary: dict[str, LoadedModel] = {}
        self._pinned: dict[tuple[str, int], LoadedModel] = {}  # insertion order = LRU order
        # Serialises switches only: a slower, older switch must not overwrite a newer one.
        self._switch_lock = threading.Lock()
        self._pinned_lock = threading.Lock()

    @property
    def served(self) -> list[LoadedModel]:
        """The primary model of every served name, by name."""
        return [self._primary[name] for name in sorted(self._primary)]

    def serve(self, ref: str) -> Switched:
        """Serve a reference: ``name`` (its champion), ``name@alias`` or ``name:version``."""
        if "@" in ref:
            name, alias = ref.split("@", 1)
            return self.switch(name, alias=alias)
        if ":" in ref:
            name, version = ref.split(":", 1)
            return self.switch(name, version=version)
        return self.switch(ref, alias=DEFAULT_ALIAS)

    def switch(self, name: str, alias: str = "", version: int | str = "") -> Switched:
        """Serve ``name`` at ``alias`` or ``version`` as its primary model.

        The new session is loaded and warmed up before the swap; requests in flight keep
        the model they started with, and later ones get the new one.

        Raises
        ------
        InvalidArgument
            Without exactly one of ``alias`` and ``version``, or a version that is not a
            positive integer.
        NotFound
            For an unknown model, version or alias.
        FailedPrecondition
            When the artifact cannot be served (see :class:`LoadedModel`) or its
            features are not in the feature stream.
        """
        if bool(alias) == (version not in ("", None)):
            raise InvalidArgument(f"switching {name!r} needs exactly one of alias or version")
        record = self._lookup(name, alias=alias, version=version)
        with self._switch_lock:
            previous = self._primary.get(name)
            if previous is not None and previous.record.sha256 == record.sha256:
                model = previous.with_alias(alias)
            else:
                model = self._load(record, alias)
            self._primary[name] = model  # one store: readers see the old or the new model
        return Switched(model, previous)

    def refresh(self) -> list[Switched]:
        """Follow moved aliases: switch every primary whose alias now names another version."""
        switched = []
        for model in self.served:
            if not model.alias:
                continue
            try:
                record = self.registry.get(model.name, alias=model.alias)
            except NotFound:
                continue  # the alias was deleted: keep serving what we have
            if record.version != model.version:
                switched.append(self.switch(model.name, alias=model.alias))
        return switched

    def model(self, name: str, version: str = "") -> LoadedModel:
        """The model a request names: ``version`` "" is the primary, else a version or alias.

        Raises
        ------
        NotFound
            For a model name that is not served, or a version or alias it does not have.
        """
        primary = self._primary.get(name)
        if primary is None:
            served = ", ".join(sorted(self._primary)) or "none"
            raise NotFound(f"model {name!r} is not served; served models: {served}")
        if not version or version in (str(primary.version), primary.alias):
            return primary
        if version.isdigit():
            pinned = self._pinned.get((name, int(version)))
            if pinned is not None:  # no registry read on the hot path
                return pinned
            record = self._lookup(name, version=version)
        else:
            record = self._lookup(name, alias=version)
        if record.version == primary.version:
            return primary
        return self._pinned_model(record)

    def predict(self, name: str, features: object, version: str = "") -> Prediction:
        """Check ``features`` (FP32 ``[N, k]``) and predict them with a served model."""
        model = self.model(name, version)
        return self.predict_with(model, model.check(features))

    def predict_with(
        self, model: LoadedModel, features: np.ndarray, digests: np.ndarray | None = None
    ) -> Prediction:
        """Predict checked rows through the cache: one session run for all the misses.

        ``digests`` are the rows' feature digests when the caller has them (the stream
        digests the float64 values it received); by default they are computed here.
        """
        sha = model.record.sha256
        if len(features) == 1 and digests is None:
            # Batch 1 is the latency path: scalars instead of the masks and arrays below.
            digest = row_digest(features[0])
            cached = self.cache.get(sha, digest)
            if cached is None:
                fresh = model.predict(features)
                self.cache.store(sha, np.array([digest], np.uint64), fresh)
                return Prediction(model, fresh, np.array([digest], np.uint64), np.zeros(1, bool))
            return Prediction(
                model,
                np.array([cached], np.float32),
                np.array([digest], np.uint64),
                np.ones(1, bool),
            )
        if digests is None:
            digests = feature_digests(features)
        probabilities, missing = self.cache.lookup(sha, digests)
        misses = int(missing.sum())
        if misses:
            fresh = model.predict(features if misses == len(features) else features[missing])
            probabilities[missing] = fresh
            self.cache.store(sha, digests[missing], fresh)
        return Prediction(model, probabilities, digests, ~missing)

    def _lookup(self, name: str, alias: str = "", version: int | str = "") -> ModelVersion:
        if alias:
            return self.registry.get(name, alias=alias)
        try:
            number = int(version)
        except ValueError:
            raise InvalidArgument(
                f"version must be a registry version number, e.g. 3, got {version!r}"
            ) from None
        if number < 1:
            raise InvalidArgument(f"version must be 1 or more, got {number}")
        return self.registry.get(name, version=number)

    def _load(self, record: ModelVersion, alias: str) -> LoadedModel:
        if self._stream_features is not None:
            missing = [n for n in record.feature_names if n not in self._stream_features]
            if missing:
                raise FailedPrecondition(
                    f"model {record.name}:{record.version} needs features the feature "
                    f"stream does not compute: {', '.join(missing)}"
                )
        return LoadedModel(record, self.registry.read_artifact(record), alias)

    def _pinned_model(self, record: ModelVersion) -> LoadedModel:
        key = (record.name, record.version)
        with self._pinned_lock:
            pinned = self._pinned
            model = pinned.pop(key, None) or self._load(record, "")
            pinned[key] = model  # re-inserted as the most recently used
            while len(pinned) > MAX_PINNED_VERSIONS:
                del pinned[next(iter(pinned))]
        return model
