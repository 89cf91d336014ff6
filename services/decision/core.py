"""Decision core: run the policy over joined inputs and number the signals it streams."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

from quantmesh.runtime.errors import InvalidArgument
from quantmesh.runtime.metrics import SIGNALS, timed
from quantmesh.services.decision.policy import Action, Decision, DecisionInput, DecisionPolicy

DEFAULT_BATCH_SIZE = 100
MAX_BATCH_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class SignalSubscription:
    """A consumer's request for signals, as received."""

    symbols: tuple[str, ...] = ()
    from_seq: int = 0
    batch_size: int = 0
    initial_credit: int = 0
    include_hold: bool = False


@dataclass(frozen=True, slots=True)
class NumberedSignals:
    """Consecutive signals of one stream, the first numbered ``seq``."""

    seq: int
    decisions: tuple[Decision, ...]

    def __len__(self) -> int:
        return len(self.decisions)


def validate(request: SignalSubscription) -> SignalSubscription:
    """Check a subscription and fill in its defaults."""
    batch_size = request.batch_size or DEFAULT_BATCH_SIZE
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise InvalidArgument(f"batch_size must be 1..{MAX_BATCH_SIZE}, got {batch_size}")
    if request.initial_credit < 0:
        raise InvalidArgument(f"initial_credit must be 0 or more, got {request.initial_credit}")
    return SignalSubscription(
        symbols=tuple(sorted(set(request.symbols))),
        from_seq=request.from_seq,
        batch_size=batch_size,
        initial_credit=request.initial_credit,
        include_hold=request.include_hold,
    )


async def numbered_signals(
    inputs: AsyncIterator[list[DecisionInput]],
    policy: DecisionPolicy,
    request: SignalSubscription,
    on_decided: Callable[[Sequence[Decision]], None] | None = None,
) -> AsyncIterator[NumberedSignals]:
    """Decide on every input, keep what the consumer wants, number from 0, skip to from_seq.

    The policy sees every input even when its signals are skipped, so a resumed stream
    makes the same decisions as an uninterrupted one. ``on_decided`` sees every
    decision, HOLD included (the adapter records their spans).
    """
    next_seq = 0
    async for group in inputs:
        with timed("decision"):
            decisions = [policy.decide(row) for row in group]
        if on_decided is not None:
            on_decided(decisions)
        kept = [d for d in decisions if request.include_hold or d.action is not Action.HOLD]
        start = max(0, request.from_seq - next_seq)
        for decision in kept[start:]:
            SIGNALS.labels(decision.action.name).inc()
        for lo in range(start, len(kept), request.batch_size):
            chunk = tuple(kept[lo : lo + request.batch_size])
            yield NumberedSignals(next_seq + lo, chunk)
        next_seq += len(kept)
