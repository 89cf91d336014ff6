"""How a window of feature rows becomes a vector, and how market states get their outcome.

**The embedding** (``window4x8@1``) of a symbol's row is built from that row and the
:data:`WINDOW_ROWS` - 1 rows before it (the symbol's previous rows, whatever the time
gap between them), using the eight scale-free H1 features of :data:`EMBEDDING_FEATURES`:

1. each feature is standardised with a *fixed* centre and scale, ``(x - centre) / scale``,
   clipped to ±:data:`CLIP` so that one extreme value cannot dominate. The scales are
   about one standard deviation of the feature on the shipped EUR/USD H1 2017 bars; they
   are constants, not fitted per run, so the same row always gives the same vector;
2. the window's rows are flattened oldest first (``row0.f0 … row0.f7, row1.f0 …``);
3. the result is L2-normalised, so stores compare directions (cosine).

Every input is a ratio, a log-return or a [0, 1] scale (see
:mod:`quantmesh.services.features.schema`), so the vector does not depend on the price
level: a state of EUR/USD at 1.05 and one at 1.20, or of another pair, compare directly.
A row has no vector while any value of its window is NaN (features warming up).

**Outcomes** (no lookahead). The state of a row at ``t`` (its bar's end) with close ``c``
has ``next_return_bps = (c' / c - 1) · 10⁴``, where ``c'`` is the close of the symbol's
last row at or before ``t + horizon`` — the price as it stood when the horizon ended.
It is known at ``t + horizon`` and uses only rows after ``t`` (and ``c`` itself):

- a row becomes a state only once a row at or after ``t + horizon`` has been seen, i.e.
  once its outcome time has passed;
- a row with no later row inside its horizon (e.g. the last bar before a weekend, with a
  one-hour horizon) has no observed outcome and is no state;
- its vector uses only rows at or before ``t``.

:func:`market_states` builds the states of a whole history at once;
:class:`StateRecorder` builds the same states row by row, as a live stream arrives.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from quantmesh.services.features.schema import FeatureRows
from quantmesh.storage.vectors.port import MarketState, unit_vector

__all__ = [
    "CLIP",
    "DEFAULT_HORIZON_MS",
    "DIMENSIONS",
    "EMBEDDING_FEATURES",
    "EMBEDDING_NAME",
    "WINDOW_ROWS",
    "Observation",
    "StateRecorder",
    "embed_rows",
    "market_states",
    "standardise",
]

EMBEDDING_NAME = "window4x8@1"
# (feature, centre, scale): scales are about one standard deviation on EUR/USD H1 2017.
EMBEDDING_FEATURES: tuple[tuple[str, float, float], ...] = (
    ("log_return_1", 0.0, 0.001),
    ("log_return_4", 0.0, 0.002),
    ("close_ema_10_gap", 0.0, 0.0013),
    ("close_ema_30_gap", 0.0, 0.0024),
    ("ema_10_30_ratio", 0.0, 0.0014),
    ("rsi_14", 0.5, 0.13),
    ("adx_14", 0.27, 0.11),
    ("zscore_20", 0.0, 1.4),
)
FEATURE_NAMES: tuple[str, ...] = tuple(name for name, _, _ in EMBEDDING_FEATURES)
WINDOW_ROWS = 4
CLIP = 4.0
DIMENSIONS = WINDOW_ROWS * len(EMBEDDING_FEATURES)
DEFAULT_HORIZON_MS = 3_600_000  # one H1 bar

_CENTRES = np.array([centre for _, centre, _ in EMBEDDING_FEATURES], np.float64)
_SCALES = np.array([scale for _, _, scale in EMBEDDING_FEATURES], np.float64)


def standardise(values: np.ndarray) -> np.ndarray:
    """``(rows, 8)`` raw values of :data:`FEATURE_NAMES` → fixed-scale z-scores, clipped."""
    z = (np.asarray(values, np.float64) - _CENTRES) / _SCALES
    clipped: np.ndarray = np.clip(z, -CLIP, CLIP)  # NaN stays NaN
    return clipped


def _unit_rows(windows: np.ndarray) -> np.ndarray:
    """Each row L2-normalised, as float32; NaN rows where a value is NaN or the norm is 0."""
    norms = np.sqrt(np.sum(windows * windows, axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        unit: np.ndarray = windows / norms[:, None]
    unit[~(norms > 0)] = np.nan  # NaN norms compare False too
    return unit.astype(np.float32)


def embed_rows(values: np.ndarray) -> np.ndarray:
    """Vectors of one symbol's rows, oldest first: ``(rows, DIMENSIONS)`` float32.

    ``values`` holds the raw :data:`FEATURE_NAMES` columns. Row ``i``'s vector is built
    from rows ``i - WINDOW_ROWS + 1 .. i``; it is all NaN while that window is incomplete
    or holds a NaN.
    """
    z = standardise(values)
    rows = len(z)
    out = np.full((rows, DIMENSIONS), np.nan, np.float32)
    if rows >= WINDOW_ROWS:
        windows = np.lib.stride_tricks.sliding_window_view(z, (WINDOW_ROWS, z.shape[1]))
        flat = windows.reshape(rows - WINDOW_ROWS + 1, DIMENSIONS)
        out[WINDOW_ROWS - 1 :] = _unit_rows(flat)
    return out


def market_states(
    rows: FeatureRows,
    symbols: Sequence[str],
    horizon_ms: int = DEFAULT_HORIZON_MS,
) -> list[MarketState]:
    """Every state of ``rows`` whose outcome the rows already show, by symbol then time.

    ``symbols[i]`` names ``symbol_index == i``. Rows of one symbol must have increasing
    ``time_msc``; rows without a finite, positive ``close_points`` are ignored (they are
    neither states nor prices). See the module docstring for the outcome rule.
    """
    if horizon_ms <= 0:
        raise ValueError(f"horizon_ms must be positive, got {horizon_ms}")
    features = rows.select(FEATURE_NAMES)
    closes = rows.column("close_points")
    states: list[MarketState] = []
    for code, symbol in enumerate(symbols):
        mine = np.flatnonzero((rows.symbol_index == code) & np.isfinite(closes) & (closes > 0))
        times = rows.time_msc[mine].astype(np.int64)
        if np.any(np.diff(times) <= 0):
            raise ValueError(f"{symbol}'s rows must have increasing time_msc")
        close = closes[mine]
        vectors = embed_rows(features[mine])
        targets = times + horizon_ms
        # The last row at or before each target, and whether the history reaches it.
        at_target = np.searchsorted(times, targets, side="right") - 1
        known = (targets <= times[-1]) if len(times) else np.zeros(0, bool)
        moved = at_target > np.arange(len(times))  # some row inside the horizon
        usable = known & moved & ~np.isnan(vectors[:, 0])
        returns = (close[at_target] / close - 1.0) * 1e4
        states.extend(
            MarketState.of(symbol, int(times[i]), vectors[i], float(returns[i]), horizon_ms)
            for i in np.flatnonzero(usable)
        )
    return states


@dataclass(frozen=True, eq=False)
class Observation:
    """What one row adds: its own vector (None while warming up) and the states whose
    outcome it completes (ready to store)."""

    vector: np.ndarray | None
    resolved: tuple[MarketState, ...]


@dataclass
class _Pending:
    time_msc: int
    close: float
    vector: np.ndarray


class _SymbolHistory:
    def __init__(self) -> None:
        self.window: deque[np.ndarray] = deque(maxlen=WINDOW_ROWS)
        self.pending: deque[_Pending] = deque()
        self.last_time: int | None = None
        self.last_close = float("nan")


class StateRecorder:
    """Build :func:`market_states`'s states from rows as they arrive, one symbol at a time.

    :meth:`observe` takes each row in time order and returns its vector plus the states
    that the row completes; over a whole history it yields exactly the states that
    :func:`market_states` builds from it. A row not newer than the symbol's last one (a
    replay) is ignored.
    """

    def __init__(self, horizon_ms: int = DEFAULT_HORIZON_MS) -> None:
        if horizon_ms <= 0:
            raise ValueError(f"horizon_ms must be positive, got {horizon_ms}")
        self.horizon_ms = horizon_ms
        self._symbols: dict[str, _SymbolHistory] = {}

    def observe(self, symbol: str, time_msc: int, values: Mapping[str, float]) -> Observation:
        """Record ``symbol``'s row at ``time_msc``; ``values`` maps feature names to values
        (:data:`FEATURE_NAMES` and ``close_points`` at least)."""
        history = self._symbols.setdefault(symbol, _SymbolHistory())
        close = float(values["close_points"])
        if not (np.isfinite(close) and close > 0):
            return Observation(None, ())
        if history.last_time is not None and time_msc <= history.last_time:
            return Observation(None, ())
        resolved = self._resolve(symbol, history, time_msc, close)
        row = standardise(np.array([[values[name] for name in FEATURE_NAMES]]))[0]
        history.window.append(row)
        vector = None
        if len(history.window) == WINDOW_ROWS:
            unit = _unit_rows(np.concatenate(tuple(history.window))[None, :])[0]
            if not np.isnan(unit[0]):
                history.pending.append(_Pending(time_msc, close, unit))
                vector = unit_vector(unit)  # as the state will hold it, bit for bit
        history.last_time, history.last_close = time_msc, close
        return Observation(vector, resolved)

    def _resolve(
        self, symbol: str, history: _SymbolHistory, time_msc: int, close: float
    ) -> tuple[MarketState, ...]:
        resolved = []
        pending = history.pending
        while pending and pending[0].time_msc + self.horizon_ms <= time_msc:
            state = pending.popleft()
            if time_msc == state.time_msc + self.horizon_ms:
                later = close  # this row ends the horizon exactly
            elif history.last_time != state.time_msc:
                later = history.last_close  # the last row before the horizon's end
            else:
                continue  # no row inside the horizon: no observed outcome
            resolved.append(
                MarketState.of(
                    symbol,
                    state.time_msc,
                    state.vector,
                    (later / state.close - 1.0) * 1e4,
                    self.horizon_ms,
                )
            )
        return tuple(resolved)
