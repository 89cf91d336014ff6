"""Synthetic correlated ticks for several symbols: seeded, chunked and seekable.

These are random walks for testing and load, not market data.

Model
-----
There are ``k`` instruments, each with a start price ``p0_j``, ``digits`` ``d_j``, typical
spread ``s_j`` and annualised volatility ``v_j``, and a ``k×k`` correlation matrix ``R``
(positive definite). Step ``i = 0..N−1`` is at ``start_ms + i·tick_ms``, with
``N = ⌈duration_ms / tick_ms⌉``. Every instrument quotes at every step.

- Log-price: ``x_0 = log p0`` and ``x_i = x_{i−1} + diag(σ)·L·z_i``, with ``z_i ~ N(0, I_k)``,
  ``L·Lᵀ = R`` (Cholesky), ``σ_j = v_j·sqrt(tick_ms / MARKET_YEAR_MS)``. The market year
  is 260 days of 24 hours, because FX trades around the clock, five days a week. There
  is no drift in log-price, and no weekend gap.
- Quote: ``mid = exp(x)·10**d`` points. The spread is log-normal around ``s_j`` through
  the same 1024-quantile table as :mod:`~quantmesh.services.marketdata.ticks`. Then
  ``bid = round(mid − spread/2)`` and ``ask = bid + spread``.
- Volume: 1 per tick, so the tick volume of an H1 bar is its tick count.

The steps are cut into chunks of ``chunk_steps``. Chunk ``c`` draws its normals, then
its spread draws, from ``numpy.random.default_rng([seed, c])``, always for all ``k``
instruments. Subscribing to a subset selects columns, so a symbol's prices do not
depend on which other symbols are subscribed. Seeking to chunk ``c`` regenerates the
earlier chunks' returns once, and keeps only their final log-prices (``k`` floats per
chunk). Memory stays bounded by one chunk.

A merged stream of ``m`` symbols has ``m`` rows per step, in symbol order. So row
``seq`` is step ``seq // m`` of symbol ``seq % m``, and rows are ordered by
``(time, symbol index)``.

Not modelled: triangular consistency (EURGBP is not EURUSD/GBPUSD), volatility
clustering, fat tails, sessions.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from quantmesh.services.marketdata.sources import (
    EURGBP,
    EURUSD,
    GBPUSD,
    USDJPY,
    Bars,
    Symbol,
    TickColumns,
    check_read,
    check_symbols,
    rebatch,
)
from quantmesh.services.marketdata.ticks import H1_MS, SPREAD_QUANTILES, spread_table

MARKET_YEAR_MS = 260 * 86_400_000
WEEK_MS = 5 * 86_400_000  # one week of FX market time: Sunday 22:00 to Friday 22:00 UTC
DEFAULT_START_MS = 1_704_146_400_000  # 2024-01-01 22:00 UTC, a Monday's session open
DEFAULT_INSTRUMENTS: tuple[tuple[Symbol, float], ...] = (
    (EURUSD, 1.1000),
    (GBPUSD, 1.2700),
    (USDJPY, 150.000),
    (EURGBP, 0.8600),
)


@dataclass(frozen=True, slots=True, eq=False)
class _Chunk:
    first_step: int
    time_msc: np.ndarray  # (steps,)
    ask: np.ndarray  # (steps, k), generation order
    bid: np.ndarray


class SyntheticSource:
    """Correlated log-normal random walks: a :class:`TickSource` for any number of symbols.

    Parameters
    ----------
    instruments:
        ``(symbol, start price)`` pairs. Their order is the order of the rows and columns
        of ``correlation``.
    seed:
        RNG seed (>= 0).
    correlation:
        One rho for every pair, or a full ``k×k`` matrix. It must be symmetric, with a
        unit diagonal, and positive definite.
    annual_volatility:
        Annualised volatility of log-returns: one value for all, or one per instrument.
    tick_ms, start_ms, duration_ms:
        Step interval, time of the first step (UTC epoch ms) and length of the stream.
    spread_sigma:
        Log-normal deviation of the spread around each symbol's ``spread_points``.
    chunk_steps:
        Steps generated at once. It bounds memory, and it is part of the seed.
    """

    name = "synthetic"

    def __init__(
        self,
        instruments: Sequence[tuple[Symbol, float]] = DEFAULT_INSTRUMENTS,
        *,
        seed: int = 7,
        correlation: float | ArrayLike = 0.6,
        annual_volatility: float | Sequence[float] = 0.08,
        tick_ms: int = 250,
        start_ms: int = DEFAULT_START_MS,
        duration_ms: int = WEEK_MS,
        spread_sigma: float = 0.25,
        chunk_steps: int = 4096,
    ) -> None:
        k = len(instruments)
        names = [symbol.name for symbol, _ in instruments]
        if k == 0 or len(set(names)) != k:
            raise ValueError(f"instruments must be non-empty with distinct names, got {names}")
        if any(not (math.isfinite(price) and price > 0) for _, price in instruments):
            raise ValueError("start prices must be finite and > 0")
        if seed < 0 or tick_ms < 1 or duration_ms < 1 or start_ms < 0 or chunk_steps < 1:
            raise ValueError("seed, start_ms must be >= 0; tick_ms, duration_ms, chunk_steps >= 1")
        vol = np.broadcast_to(np.asarray(annual_volatility, np.float64), (k,))
        if not bool(np.all(np.isfinite(vol) & (vol >= 0))) or spread_sigma < 0:
            raise ValueError("annual_volatility and spread_sigma must be finite and >= 0")
        self._chol = cholesky_of_correlation(correlation, k)
        self._order = {name: j for j, name in enumerate(names)}
        self._symbols = tuple(sorted((s for s, _ in instruments), key=lambda s: s.name))
        self._step_sigma = vol * math.sqrt(tick_ms / MARKET_YEAR_MS)
        self._log_p0 = np.log(np.array([price for _, price in instruments], np.float64))
        self._scale = 10.0 ** np.array([s.digits for s, _ in instruments], np.float64)
        self._spread_table = np.stack(  # (k, SPREAD_QUANTILES)
            [spread_table(symbol.spread_points, spread_sigma) for symbol, _ in instruments]
        )
        self.seed = seed
        self.tick_ms = tick_ms
        self.start_ms = start_ms
        self.chunk_steps = chunk_steps
        self.n_steps = -(-duration_ms // tick_ms)
        self.n_chunks = -(-self.n_steps // chunk_steps)
        self._levels: dict[int, np.ndarray] = {0: self._log_p0}  # log-price before chunk c
        self._bars: dict[str, Bars] | None = None

    @property
    def symbols(self) -> Sequence[Symbol]:
        return self._symbols

    def tick_count(self, symbols: Sequence[str]) -> int:
        check_symbols(symbols, self._order)
        return self.n_steps * len(symbols)

    def read(
        self, symbols: Sequence[str], from_seq: int = 0, batch_size: int = 1000
    ) -> Iterator[TickColumns]:
        check_symbols(symbols, self._order)
        check_read(from_seq, batch_size, self.n_steps * len(symbols))
        columns = np.array([self._order[name] for name in symbols], np.intp)
        return rebatch(self._blocks(columns, from_seq), batch_size)

    def bars(self, symbol: str) -> Bars:
        check_symbols([symbol], self._order)
        if self._bars is None:
            self._bars = self._aggregate_bars()
        return self._bars[symbol]

    def _blocks(self, columns: np.ndarray, from_seq: int) -> Iterator[TickColumns]:
        m = len(columns)
        if from_seq == self.n_steps * m:
            return
        symbol_index = np.tile(np.arange(m, dtype=np.uint32), self.chunk_steps)
        ones = np.ones(self.chunk_steps * m)
        for c in range(from_seq // m // self.chunk_steps, self.n_chunks):
            chunk = self._chunk(c)
            rows = len(chunk.time_msc) * m
            seq = chunk.first_step * m
            cut = max(from_seq - seq, 0)
            yield TickColumns(
                seq + cut,
                symbol_index[cut:rows],
                np.repeat(chunk.time_msc, m)[cut:],
                chunk.bid[:, columns].ravel()[cut:],
                chunk.ask[:, columns].ravel()[cut:],
                ones[cut:rows],
            )

    def _log_prices(self, c: int, level: np.ndarray) -> tuple[np.ndarray, np.random.Generator]:
        steps = min(self.chunk_steps, self.n_steps - c * self.chunk_steps)
        rng = np.random.default_rng([self.seed, c])
        returns = (rng.standard_normal((steps, len(level))) @ self._chol.T) * self._step_sigma
        if c == 0:
            returns[0] = 0.0  # the first step quotes the start price
        # Chunk-wise and from-the-start reads run the very same operations: identical bits.
        return level + np.cumsum(returns, axis=0), rng

    def _level(self, c: int) -> np.ndarray:
        known = c
        while known not in self._levels:
            known -= 1
        level = self._levels[known]
        for earlier in range(known, c):
            level = self._log_prices(earlier, level)[0][-1].copy()
            self._levels[earlier + 1] = level
        return level

    def _chunk(self, c: int) -> _Chunk:
        log_price, rng = self._log_prices(c, self._level(c))
        self._levels.setdefault(c + 1, log_price[-1].copy())
        draws = rng.integers(0, SPREAD_QUANTILES, log_price.shape, dtype=np.uint16)
        spread = self._spread_table[np.arange(log_price.shape[1]), draws]
        bid = np.rint(np.exp(log_price) * self._scale - spread / 2).astype(np.int64)
        first = c * self.chunk_steps
        time_msc = self.start_ms + self.tick_ms * np.arange(first, first + len(log_price))
        return _Chunk(first, time_msc, bid + spread, bid)

    def _aggregate_bars(self) -> dict[str, Bars]:
        # Hourly partial bars per chunk, then one more pass merges hours split by a chunk edge.
        parts = []
        for c in range(self.n_chunks):
            chunk = self._chunk(c)
            ones = np.ones(len(chunk.time_msc))
            ask = chunk.ask
            parts.append(_hourly(chunk.time_msc, ask, ask, ask, ask, ones))
        merged = _hourly(*(np.concatenate(column) for column in zip(*parts, strict=True)))
        time_ms, o, h, lo, cl, volume = merged
        bars = {}
        for name, j in self._order.items():
            columns = (time_ms, o[:, j], h[:, j], lo[:, j], cl[:, j], volume)
            bars[name] = Bars(*(np.array(column) for column in columns))  # contiguous copies
        return bars


def cholesky_of_correlation(correlation: float | ArrayLike, k: int) -> np.ndarray:
    """Validate a correlation (one rho or a ``k×k`` matrix) and return its Cholesky factor.

    Raises
    ------
    ValueError
        If the matrix has the wrong shape, is not finite or not symmetric, does not have
        a unit diagonal, has entries outside [-1, 1], or is not positive definite.
    """
    matrix = np.asarray(correlation, np.float64)
    if matrix.ndim == 0:
        rho = float(matrix)
        matrix = np.full((k, k), rho)
        np.fill_diagonal(matrix, 1.0)
    if matrix.shape != (k, k):
        raise ValueError(f"correlation must be one number or a {k}x{k} matrix, got {matrix.shape}")
    if not bool(np.all(np.isfinite(matrix))) or not np.allclose(matrix, matrix.T, atol=1e-12):
        raise ValueError("correlation matrix must be finite and symmetric")
    if not np.allclose(np.diag(matrix), 1.0) or bool(np.any(np.abs(matrix) > 1.0)):
        raise ValueError("correlation matrix needs a unit diagonal and entries in [-1, 1]")
    try:
        return np.linalg.cholesky(matrix)
    except np.linalg.LinAlgError:
        eigen = float(np.linalg.eigvalsh(matrix).min())
        raise ValueError(
            f"correlation matrix is not positive definite (smallest eigenvalue {eigen:.3g}); "
            f"with one rho for {k} symbols it must lie in ({-1 / max(k - 1, 1):.3g}, 1)"
        ) from None


def _hourly(
    time_ms: np.ndarray,
    open_: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Merge time-ordered rows (bars or ticks) into UTC-aligned H1 bars."""
    hour = time_ms // H1_MS * H1_MS
    starts = np.flatnonzero(np.r_[True, hour[1:] != hour[:-1]])
    ends = np.r_[starts[1:], len(hour)] - 1
    return (
        hour[starts],
        open_[starts],
        np.maximum.reduceat(high, starts, axis=0),
        np.minimum.reduceat(low, starts, axis=0),
        close[ends],
        np.add.reduceat(volume, starts),
    )
