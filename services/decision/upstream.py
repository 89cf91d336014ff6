"""Decision inputs: the feature stream joined with the prediction stream, row by row.

Inference numbers its predictions after the feature rows they were made on
(``feature_seq``), so the join needs no clock: every primary prediction is paired with
the feature row of the same seq. Shadow predictions are never traded and skipped here.

With the optional similar-states lookup (:mod:`quantmesh.services.decision.similar`),
every feature row is also observed once, in seq order, before any row after it is
decided, and each input carries what followed the past states most like its row.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import grpc

from quantmesh.features.v1 import features_pb2
from quantmesh.inference.v1 import inference_pb2, inference_pb2_grpc
from quantmesh.runtime.subscriber import StreamSpec, StreamSubscriber
from quantmesh.services.decision.policy import DecisionInput

if TYPE_CHECKING:  # similar imports FeatureRow from here
    from quantmesh.services.decision.similar import SimilarStates


class PredictionSubscriber(StreamSubscriber[inference_pb2.PredictionBatch]):
    """Read predictions exactly once across reconnects (see :class:`StreamSubscriber`)."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        symbols: Sequence[str] = (),
        model_names: Sequence[str] = (),
        from_seq: int = 0,
        window: int = 16,
        max_resumes: int = 10,
    ) -> None:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)

        def subscription(from_seq: int, initial_credit: int) -> inference_pb2.Subscription:
            return inference_pb2.Subscription(
                symbols=list(symbols),
                model_names=list(model_names),
                from_seq=from_seq,
                initial_credit=initial_credit,
            )

        spec: StreamSpec[inference_pb2.PredictionBatch] = StreamSpec(
            open_call=stub.Subscribe,
            request_type=inference_pb2.SubscribeRequest,
            subscription=subscription,
        )
        super().__init__(spec, from_seq=from_seq, window=window, max_resumes=max_resumes)


@dataclass(frozen=True)
class FeatureRow:
    """One row of a FeatureBatch, decoded."""

    seq: int
    symbol: str
    time_msc: int
    values: Mapping[str, float]
    session_mask: int
    regime: int


def feature_rows(batch: features_pb2.FeatureBatch) -> list[FeatureRow]:
    width = len(batch.feature_names)
    names = list(batch.feature_names)
    return [
        FeatureRow(
            seq=batch.seq + i,
            symbol=batch.symbols[batch.symbol_index[i]],
            time_msc=batch.time_msc[i],
            values=dict(zip(names, batch.values[i * width : (i + 1) * width], strict=True)),
            session_mask=batch.session_mask[i],
            regime=batch.regime[i],
        )
        for i in range(len(batch.time_msc))
    ]


# The model's data range and inputs, looked up once per (name, version).
ModelInfo = Callable[[str, str], tuple[int, tuple[str, ...]]]


async def joined_inputs(
    features: AsyncIterator[features_pb2.FeatureBatch],
    predictions: AsyncIterator[inference_pb2.PredictionBatch],
    digits: Mapping[str, int],
    model_info: ModelInfo,
    similar: SimilarStates | None = None,
) -> AsyncIterator[list[DecisionInput]]:
    """Pair each primary prediction with its feature row; one list per prediction batch.

    With ``similar``, each input also carries what followed its row's most similar past
    states (None: the inputs are exactly those without the lookup).
    """
    pending: deque[FeatureRow] = deque()
    async for batch in predictions:
        inputs = []
        for i in range(len(batch.time_msc)):
            model = batch.models[batch.model_index[i]]
            if model.shadow:
                continue
            wanted = batch.feature_seq[i]
            while not pending or pending[-1].seq < wanted:
                more = await anext(features, None)
                if more is None:
                    raise RuntimeError(f"feature stream ended before feature row {wanted}")
                pending.extend(feature_rows(more))
            while pending[0].seq < wanted:
                passed = pending.popleft()
                if similar is not None:
                    await similar.observe(passed)
            row = pending[0]
            data_to_ms, model_features = model_info(model.name, model.version)
            outcomes = None if similar is None else await similar.outcomes(row)
            inputs.append(
                DecisionInput(
                    symbol=row.symbol,
                    digits=digits[row.symbol],
                    time_msc=row.time_msc,
                    feature_seq=row.seq,
                    prediction_seq=batch.seq + i,
                    probability_up=batch.probability_up[i],
                    model_name=model.name,
                    model_version=model.version,
                    model_alias=model.alias,
                    model_data_to_ms=data_to_ms,
                    close_points=round(row.values["close_points"]),
                    spread_points=row.values["spread_mean_points"],
                    atr_points=_atr_points(row),
                    tick_count=int(_finite_or(row.values["tick_count"], 0)),
                    regime=row.regime,
                    session_mask=row.session_mask,
                    feature_names=model_features,
                    feature_values=tuple(row.values[name] for name in model_features),
                    similar=outcomes,
                )
            )
        yield inputs


def _atr_points(row: FeatureRow) -> float:
    return row.values["atr_14_rel"] * row.values["close_points"]


def _finite_or(value: float, default: float) -> float:
    return value if math.isfinite(value) else default
