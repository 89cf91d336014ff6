"""The recorded account analysed over a time window: the analytics service's grpc-free core.

A **window** ``[from_ms, to_ms)`` is measured as if the account had started at
``from_ms`` holding its equity then: the ledger replays every fill and mark before
``to_ms`` (a position opened earlier needs its entry), and the window keeps

- the equity curve points at or after ``from_ms``;
- the trades (closed positions) that closed in the window;
- realized profit and commission booked in the window, and the change of unrealized
  profit over it, so ``equity at from + realized − commission + Δunrealized`` is the
  equity at the end, and net profit, returns, drawdown and Sharpe are the window's own;
- the positions open at its end, marked as the ledger marks them.

The whole history is the window ``[0, ∞)``, for which every figure equals
:func:`~quantmesh.services.analytics.performance.analyse` of the run. Per model, the
fills of the positions each model version opened run through a ledger of their own with
the account's start balance (the rule of :func:`~.performance.model_performances`).

Analyses are cached by the store's revision, so repeated questions about an unchanged
store cost nothing; any recorded fill or mark changes the revision. Nothing here
imports grpc.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from quantmesh.runtime.errors import FailedPrecondition, NotFound
from quantmesh.services.analytics.ledger import (
    CONTRACT_SIZE,
    Conversion,
    EquityCurve,
    Fill,
    Ledger,
    LedgerResult,
    Mark,
    conversion_from_marks,
)
from quantmesh.services.analytics.performance import Analysis, ModelPerformance, performance
from quantmesh.services.analytics.runs import Account, Run
from quantmesh.services.analytics.store import AnalyticsStore

__all__ = [
    "AccountAnalytics",
    "ModelKey",
    "Window",
    "analyse_window",
    "curve_points",
    "fills_by_model",
    "sum_unrealized",
    "window_ledger",
]

ModelKey = tuple[str, str]
"""``(model_name, model_version)``."""


@dataclass(frozen=True, slots=True)
class Window:
    """An account analysed over ``[from_ms, to_ms)`` (``to_ms`` None: no end).

    ``run`` holds the window's fills and marks, its account's start balance being the
    equity at ``from_ms``: what the report renders. ``analysis.ledger`` is the window's
    ledger, ``analysis.models`` the models active in it (a fill in the window, or a
    position open at its end), whose ledgers ``model_ledgers`` keeps. ``known_models``
    are every model version that ever opened a position, in or out of the window.
    """

    from_ms: int
    to_ms: int | None
    run: Run
    analysis: Analysis
    model_ledgers: Mapping[ModelKey, LedgerResult]
    known_models: frozenset[ModelKey]


def window_ledger(
    fills: Iterable[Fill],
    marks: Iterable[Mark],
    *,
    start_balance: Decimal,
    from_ms: int = 0,
    to_ms: int | None = None,
    contract_size: Decimal = CONTRACT_SIZE,
    conversion: Conversion,
) -> LedgerResult:
    """The ledger of ``fills`` and ``marks`` over ``[from_ms, to_ms)`` (module docstring).

    Events are ordered as :func:`~.ledger.run_ledger` orders them (by time, marks before
    fills, ties in their given order), so the whole history gives its result exactly.
    The result's ``start_balance`` is the equity at ``from_ms``, its ``realized`` and
    ``commission`` are booked in the window and its ``unrealized`` is the change over it.
    """
    events: list[tuple[int, int, int, Fill | Mark]] = [
        (m.time_ms, 0, i, m) for i, m in enumerate(marks) if to_ms is None or m.time_ms < to_ms
    ]
    events += [
        (f.time_ms, 1, i, f) for i, f in enumerate(fills) if to_ms is None or f.time_ms < to_ms
    ]
    events.sort(key=lambda event: event[:3])
    ledger = Ledger(start_balance, contract_size=contract_size, conversion=conversion)
    at_from: tuple[Decimal, Decimal, Decimal, Decimal, int] | None = None
    times: list[int] = []
    balances: list[Decimal] = []
    equities: list[Decimal] = []
    for k, (time_ms, _, _, event) in enumerate(events):
        if at_from is None and time_ms >= from_ms:
            at_from = _state(ledger)
        if isinstance(event, Mark):
            ledger.mark(event)
        else:
            ledger.fill(event)
        if time_ms >= from_ms and (k + 1 == len(events) or events[k + 1][0] != time_ms):
            times.append(time_ms)
            balances.append(ledger.balance)
            equities.append(ledger.equity())
    realized, commission, equity, unrealized, trades = at_from or _state(ledger)
    return LedgerResult(
        start_balance=equity,
        curve=EquityCurve(tuple(times), tuple(balances), tuple(equities)),
        trades=tuple(ledger.trades[trades:]),
        open_positions=tuple(ledger.open_positions()),
        realized=ledger.realized - realized,
        commission=ledger.commission - commission,
        unrealized=ledger.unrealized() - unrealized,
    )


def _state(ledger: Ledger) -> tuple[Decimal, Decimal, Decimal, Decimal, int]:
    return (
        ledger.realized,
        ledger.commission,
        ledger.equity(),
        ledger.unrealized(),
        len(ledger.trades),
    )


def fills_by_model(fills: Iterable[Fill]) -> dict[ModelKey, list[Fill]]:
    """Fills grouped by the model version that opened their position, in time order.

    The rule of :func:`~.performance.model_performances`: a position belongs to the model
    of the fill that opened it, and its later fills follow it whatever their own
    metadata (a stop or a risk close carries none).
    """
    owner: dict[str, ModelKey] = {}
    open_volume: dict[str, Decimal] = {}
    groups: dict[ModelKey, list[Fill]] = {}
    for fill in sorted(fills, key=lambda f: f.time_ms):
        volume = open_volume.get(fill.position_id, Decimal(0))
        if fill.opens and volume == 0:
            owner[fill.position_id] = (fill.model_name, fill.model_version)
        open_volume[fill.position_id] = volume + (
            fill.volume_lots if fill.opens else -fill.volume_lots
        )
        key = owner.get(fill.position_id, (fill.model_name, fill.model_version))
        groups.setdefault(key, []).append(fill)
    return groups


def analyse_window(
    run: Run,
    from_ms: int = 0,
    to_ms: int | None = None,
    *,
    contract_size: Decimal = CONTRACT_SIZE,
) -> Window:
    """Overall and per-model performance of ``run`` over ``[from_ms, to_ms)``.

    Conversions use every mark of the run: a conversion at a time looks only at marks at
    or before it, so marks after the window change nothing.
    """
    account = run.account
    conversion = conversion_from_marks(run.marks, account.currency)

    def ledger_of(fills: Iterable[Fill]) -> LedgerResult:
        return window_ledger(
            fills,
            run.marks,
            start_balance=account.start_balance,
            from_ms=from_ms,
            to_ms=to_ms,
            contract_size=contract_size,
            conversion=conversion,
        )

    def inside(time_ms: int) -> bool:
        return time_ms >= from_ms and (to_ms is None or time_ms < to_ms)

    overall = ledger_of(run.fills)
    groups = fills_by_model(run.fills)
    model_ledgers: dict[ModelKey, LedgerResult] = {}
    for key, group in sorted(groups.items()):
        if to_ms is not None and group[0].time_ms >= to_ms:
            continue  # the model first traded after the window
        result = ledger_of(group)
        if result.open_positions or any(inside(f.time_ms) for f in group):
            model_ledgers[key] = result
    models = tuple(
        ModelPerformance(name, version, performance(result, account.currency))
        for (name, version), result in model_ledgers.items()
    )
    window_run = Run(
        Account(account.account_id, account.currency, overall.start_balance),
        tuple(f for f in run.fills if inside(f.time_ms)),
        tuple(m for m in run.marks if inside(m.time_ms)),
    )
    return Window(
        from_ms=from_ms,
        to_ms=to_ms,
        run=window_run,
        analysis=Analysis(overall, performance(overall, account.currency), models),
        model_ledgers=model_ledgers,
        known_models=frozenset(groups),
    )


def curve_points(curve: EquityCurve, period_ms: int | None) -> list[int]:
    """Indices of the points of ``curve`` to report.

    With no period, one point per change: the first point, every point whose balance or
    equity differs from the point before, and the last (so the curve reaches the latest
    time). With a period, the last point of each period (UTC, ``time // period_ms``):
    the equity at the period's close.
    """
    n = len(curve)
    if n == 0:
        return []
    if period_ms is None:
        return [
            k
            for k in range(n)
            if k in (0, n - 1)
            or curve.balance[k] != curve.balance[k - 1]
            or curve.equity[k] != curve.equity[k - 1]
        ]
    times = curve.time_ms
    return [k for k in range(n) if k == n - 1 or times[k] // period_ms != times[k + 1] // period_ms]


class AccountAnalytics:
    """Windows of one account, computed from the store and cached by its revision.

    Parameters
    ----------
    store:
        The recorded fills and marks.
    account:
        The account analysed; its start balance is configured, not recorded.
    cache_size:
        Windows kept: a dashboard asks the same few ranges again and again.
    """

    def __init__(self, store: AnalyticsStore, account: Account, *, cache_size: int = 8) -> None:
        self.store = store
        self.account = account
        self._cache: OrderedDict[tuple[int, int, int | None], Window] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def check_account(self, account_id: str) -> None:
        """Raise NotFound unless ``account_id`` is this account (empty means this one)."""
        if account_id and account_id != self.account.account_id:
            raise NotFound(
                f"unknown account {account_id!r}; analytics records {self.account.account_id!r}"
            )

    def window(self, from_ms: int = 0, to_ms: int | None = None) -> Window:
        """The account over ``[from_ms, to_ms)``; blocking, so call it from a worker thread.

        Raises FailedPrecondition when the recorded fills contradict each other.
        """
        with self._lock:
            cached = self._cache.get((self.store.revision, from_ms, to_ms))
            if cached is not None:
                return cached
        revision, run = self.store.snapshot(self.account)
        try:
            window = analyse_window(run, from_ms, to_ms)
        except ValueError as error:
            # The ledger refuses fills that contradict their position: the recorded
            # history is inconsistent, and no figure computed from it would be right.
            raise FailedPrecondition(f"the recorded fills cannot be accounted: {error}") from None
        with self._lock:
            self._cache[(revision, from_ms, to_ms)] = window
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return window

    def models(
        self, model_name: str, model_version: str, from_ms: int = 0, to_ms: int | None = None
    ) -> tuple[Window, list[ModelKey]]:
        """The window and the versions of ``model_name`` active in it, newest first.

        Raises NotFound for a model name no fill was ever made for. Versions are newest
        first: numeric versions (the registry's 1, 2, 3, …) by number, then others by name.
        """
        window = self.window(from_ms, to_ms)
        if not any(name == model_name for name, _ in window.known_models):
            known = sorted({name for name, _ in window.known_models if name})
            raise NotFound(
                f"no trade was made on model {model_name!r}; models that traded: "
                f"{', '.join(known) or 'none yet'}"
            )
        keys = [
            key
            for key in window.model_ledgers
            if key[0] == model_name and (not model_version or key[1] == model_version)
        ]
        return window, _newest_first(keys)


def _newest_first(keys: Sequence[ModelKey]) -> list[ModelKey]:
    numeric = sorted((k for k in keys if k[1].isdigit()), key=lambda k: int(k[1]), reverse=True)
    other = sorted((k for k in keys if not k[1].isdigit()), key=lambda k: k[1], reverse=True)
    return numeric + other


def sum_unrealized(result: LedgerResult) -> Decimal:
    """Unrealized profit of the positions open at the end of a window."""
    return sum((p.unrealized_pnl for p in result.open_positions), Decimal(0))
