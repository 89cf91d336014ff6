"""Features core: validate subscriptions and number the engine's rows for streaming.

The feature computation itself is :class:`~quantmesh.services.features.engine.FeatureEngine`;
this module turns a tick stream into consecutive, resumable row batches. Rows are a
deterministic function of the tick stream, so a consumer that resumes at ``from_seq``
gets exactly the rows it missed: the pipeline recomputes from the first tick and skips
the rows before ``from_seq`` (the engine keeps O(window) state, so that costs time, about
a second for the shipped year, never memory).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, fields

import numpy as np

from quantmesh.runtime.errors import InvalidArgument, NotFound, OutOfRange
from quantmesh.runtime.metrics import TICKS, timed
from quantmesh.services.features.engine import FeatureEngine
from quantmesh.services.features.schema import FEATURE_NAMES, FeatureRows
from quantmesh.services.marketdata.sources import Symbol, TickColumns

DEFAULT_BATCH_SIZE = 1_000
MAX_BATCH_SIZE = 100_000


@dataclass(frozen=True, slots=True)
class FeatureSubscription:
    """A consumer's request for feature rows, as received."""

    symbols: Sequence[str]
    from_seq: int = 0
    batch_size: int = 0
    initial_credit: int = 0
    feature_names: Sequence[str] = ()
    trace_rows: bool = False  # start a decision trace per row (see the .proto)


@dataclass(frozen=True, slots=True)
class FeaturePlan:
    """A validated subscription."""

    symbols: tuple[Symbol, ...]
    from_seq: int
    batch_size: int
    initial_credit: int
    feature_names: tuple[str, ...]
    columns: np.ndarray  # indices of feature_names in FEATURE_NAMES
    trace_rows: bool = False


@dataclass(frozen=True, slots=True, eq=False)
class NumberedRows:
    """Consecutive feature rows of one stream, the first numbered ``seq``."""

    seq: int
    rows: FeatureRows

    def __len__(self) -> int:
        return len(self.rows)


def plan_subscription(request: FeatureSubscription, served: Sequence[Symbol]) -> FeaturePlan:
    """Validate a subscription against the served symbols and the feature schema."""
    by_name = {symbol.name: symbol for symbol in served}
    names = sorted(set(request.symbols)) if request.symbols else sorted(by_name)
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise NotFound(
            f"unknown symbol(s) {', '.join(map(repr, unknown))}; market data serves: "
            f"{', '.join(by_name) or 'none'}"
        )
    batch_size = request.batch_size or DEFAULT_BATCH_SIZE
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidArgument(f"batch_size must be 1..{MAX_BATCH_SIZE}, got {batch_size}")
    if request.initial_credit < 0:
        raise InvalidArgument(f"initial_credit must be 0 or more, got {request.initial_credit}")
    feature_names = tuple(request.feature_names) or FEATURE_NAMES
    missing = [name for name in feature_names if name not in FEATURE_NAMES]
    if missing:
        raise InvalidArgument(
            f"unknown feature(s) {', '.join(map(repr, missing))}; the schema has: "
            f"{', '.join(FEATURE_NAMES)}"
        )
    columns = np.array([FEATURE_NAMES.index(name) for name in feature_names], dtype=np.intp)
    return FeaturePlan(
        symbols=tuple(by_name[name] for name in names),
        from_seq=request.from_seq,
        batch_size=batch_size,
        initial_credit=request.initial_credit,
        feature_names=feature_names,
        columns=columns,
        trace_rows=request.trace_rows,
    )


async def numbered_rows(
    ticks: AsyncIterator[TickColumns], plan: FeaturePlan
) -> AsyncIterator[NumberedRows]:
    """Run the engine over ``ticks`` and yield the rows from ``plan.from_seq`` on.

    A batch holds the rows one tick batch closed (at most ``plan.batch_size``), so a
    bar's row leaves as soon as the tick that closes it arrives.
    """
    engine = FeatureEngine(plan.symbols)
    next_seq = 0
    async for columns in ticks:
        with timed("features"):
            rows = engine.on_ticks(columns)
        TICKS.labels("features").inc(len(columns))
        for part in _batches(rows, next_seq, plan):
            yield part
        next_seq += len(rows)
    tail = engine.finish()
    for part in _batches(tail, next_seq, plan):
        yield part
    next_seq += len(tail)
    if plan.from_seq > next_seq:
        raise OutOfRange(
            f"from_seq {plan.from_seq} is beyond the end of the stream: it holds {next_seq} rows"
        )


def _batches(rows: FeatureRows, first_seq: int, plan: FeaturePlan) -> list[NumberedRows]:
    start = max(0, plan.from_seq - first_seq)
    return [
        NumberedRows(first_seq + lo, _slice(rows, lo, min(lo + plan.batch_size, len(rows))))
        for lo in range(start, len(rows), plan.batch_size)
    ]


def _slice(rows: FeatureRows, start: int, stop: int) -> FeatureRows:
    # Every field of FeatureRows is a per-row array (values: one row per entry).
    return FeatureRows(
        **{field.name: getattr(rows, field.name)[start:stop] for field in fields(rows)}
    )
