"""The streaming path's core: feature rows in, prediction rows out, seq for seq.

No grpc here. :class:`StreamPredictor` turns each batch of feature rows into prediction
rows for a fixed list of models. Numbering is what makes resume exact:

- with ``M`` models, the prediction of model ``j`` on feature row ``s`` has seq
  ``s * M + j`` (rows are feature-major), so with one model — the usual case — a
  prediction's seq *is* its feature row's seq, and a consumer resuming at prediction seq
  ``p`` resumes the feature stream at ``p // M``;
- every feature row yields its ``M`` rows, even one that cannot be predicted yet: a row
  whose model inputs hold NaN (the features' warm-up) gets probability NaN and class
  UNSPECIFIED, so seqs stay dense and the decision layer reads "no prediction", never a
  gap it could mistake for a lost row;
- a batch is predicted only when credit allows sending it, all of it by the models
  served at that moment, so a
  :meth:`~quantmesh.services.inference.core.ModelServer.switch` lands between two batches
  and applies to the next one sent.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace

import numpy as np

from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from quantmesh.runtime.metrics import timed
from quantmesh.services.inference.cache import feature_digests
from quantmesh.services.inference.core import LoadedModel, ModelServer, classify

DEFAULT_BATCH_SIZE = 1_000
MAX_BATCH_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class FeatureColumns:
    """A batch of feature rows as decoded from a ``FeatureBatch``.

    ``values`` is float64 ``[rows, len(feature_names)]``; row ``i`` has seq ``seq + i``.
    """

    seq: int
    symbols: tuple[str, ...]
    symbol_index: np.ndarray
    time_msc: np.ndarray
    feature_names: tuple[str, ...]
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.time_msc)


@dataclass(frozen=True, slots=True)
class ModelRef:
    """A served model version as a prediction names it."""

    name: str
    version: int
    alias: str
    shadow: bool = False


@dataclass(frozen=True, slots=True)
class PredictionColumns:
    """A batch of prediction rows (one per model per feature row); see module notes."""

    seq: int
    symbols: tuple[str, ...]
    symbol_index: np.ndarray
    time_msc: np.ndarray
    models: tuple[ModelRef, ...]
    model_index: np.ndarray
    probability_up: np.ndarray  # float64, NaN for "no prediction"
    predicted_class: np.ndarray  # PredictedClass numbers
    feature_digest: np.ndarray  # uint64
    feature_seq: np.ndarray  # uint64
    cache_hit: np.ndarray  # bool: the prediction came from the cache
    seconds: float = 0.0  # time the batch took to predict

    def __len__(self) -> int:
        return len(self.time_msc)


@dataclass(frozen=True, slots=True)
class PendingBatch:
    """A feature batch queued for prediction, numbered as the predictions it will give.

    The producer holds it until the consumer's credit allows sending; only then is it
    predicted, so a switch made while the stream waits applies to it.
    """

    seq: int
    rows: int
    skip: int
    features: FeatureColumns

    def __len__(self) -> int:
        return self.rows


@dataclass(frozen=True, slots=True)
class StreamRequest:
    """A consumer's request for predictions, as received."""

    symbols: Sequence[str] = ()
    from_seq: int = 0
    batch_size: int = 0
    initial_credit: int = 0
    model_names: Sequence[str] = ()
    include_shadow: bool = False


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """A validated request, and where to subscribe on the feature stream."""

    symbols: tuple[str, ...]
    from_seq: int
    initial_credit: int
    model_names: tuple[str, ...]
    feature_from_seq: int
    feature_batch_size: int


def plan_stream(
    request: StreamRequest, server: ModelServer, stream_features: Collection[str] | None = None
) -> StreamPlan:
    """Validate a prediction subscription.

    Raises
    ------
    NotFound
        For a model name that is not served (or no model served at all).
    InvalidArgument
        For a batch size out of range or smaller than the number of models, or a
        negative initial credit.
    FailedPrecondition
        When a model needs a feature the feature stream does not have.
    """
    served = [model.name for model in server.served]
    names = tuple(dict.fromkeys(request.model_names)) if request.model_names else tuple(served)
    if not names:
        raise NotFound("no model is served yet; load one with SwitchModel")
    models = [server.model(name) for name in names]  # NotFound names what is served
    batch_size = request.batch_size or DEFAULT_BATCH_SIZE
    if not len(names) <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidArgument(
            f"batch_size must be {len(names)}..{MAX_BATCH_SIZE} (at least one row per "
            f"model), got {batch_size}"
        )
    if request.initial_credit < 0:
        raise InvalidArgument(f"initial_credit must be 0 or more, got {request.initial_credit}")
    if stream_features is not None:
        for model in models:
            _columns(model, tuple(stream_features))
    return StreamPlan(
        symbols=tuple(sorted(set(request.symbols))),
        from_seq=request.from_seq,
        initial_credit=request.initial_credit,
        model_names=names,
        feature_from_seq=request.from_seq // len(names),
        feature_batch_size=batch_size // len(names),
    )


def _columns(model: LoadedModel, feature_names: tuple[str, ...]) -> np.ndarray:
    """Column index of each of the model's features in ``feature_names``, by name."""
    position = {name: i for i, name in enumerate(feature_names)}
    missing = [name for name in model.feature_names if name not in position]
    if missing:
        raise FailedPrecondition(
            f"model {model.label} needs features the feature stream does not carry: "
            f"{', '.join(missing)}"
        )
    return np.array([position[name] for name in model.feature_names], np.intp)


class StreamPredictor:
    """Predict feature batches with the models of one stream (see the module notes).

    Parameters
    ----------
    server:
        Serves the models; each batch reads the current primary of every name.
    plan:
        The validated stream; its ``from_seq`` may fall inside a feature row's group
        of ``M`` predictions, and the first batch then starts mid-group.
    """

    def __init__(self, server: ModelServer, plan: StreamPlan) -> None:
        self._server = server
        self._names = plan.model_names
        self._skip = plan.from_seq % len(plan.model_names)
        # Column lookups per (model sha, feature names): the stream's names rarely change.
        self._columns: dict[tuple[str, tuple[str, ...]], np.ndarray] = {}

    def pending(self, batch: FeatureColumns) -> PendingBatch:
        """Number ``batch``'s predictions (call in stream order, once per batch)."""
        m = len(self._names)
        skip, self._skip = self._skip, 0
        return PendingBatch(batch.seq * m + skip, len(batch) * m - skip, skip, batch)

    def __call__(self, pending: PendingBatch) -> PredictionColumns:
        """The prediction rows of a pending batch, ``M`` per feature row."""
        started = time.perf_counter()
        with timed("inference"):
            columns = self._predict(pending)
        return replace(columns, seconds=time.perf_counter() - started)

    def _predict(self, pending: PendingBatch) -> PredictionColumns:
        batch = pending.features
        models = [self._server.model(name) for name in self._names]
        m, rows = len(models), len(batch)
        probability = np.full((rows, m), np.nan)
        digest = np.zeros((rows, m), np.uint64)
        cached = np.zeros((rows, m), bool)
        for j, model in enumerate(models):
            key = (model.record.sha256, batch.feature_names)
            columns = self._columns.get(key)
            if columns is None:
                columns = self._columns[key] = _columns(model, batch.feature_names)
            inputs = batch.values[:, columns]
            digest[:, j] = feature_digests(inputs)
            ready = np.isfinite(inputs).all(axis=1)
            if ready.any():
                # One session run for every ready row of every symbol in the batch.
                prediction = self._server.predict_with(
                    model, inputs[ready].astype(np.float32), digest[ready, j]
                )
                probability[ready, j] = prediction.probability_up
                cached[ready, j] = prediction.cached
        refs = tuple(ModelRef(model.name, model.version, model.alias) for model in models)
        start = pending.skip
        flat = probability.reshape(-1)[start:]
        return PredictionColumns(
            seq=pending.seq,
            symbols=batch.symbols,
            symbol_index=np.repeat(batch.symbol_index, m)[start:],
            time_msc=np.repeat(batch.time_msc, m)[start:],
            models=refs,
            model_index=np.tile(np.arange(m, dtype=np.uint32), rows)[start:],
            probability_up=flat,
            predicted_class=classify(flat),
            feature_digest=digest.reshape(-1)[start:],
            feature_seq=np.repeat(batch.seq + np.arange(rows, dtype=np.uint64), m)[start:],
            cache_hit=cached.reshape(-1)[start:],
        )
