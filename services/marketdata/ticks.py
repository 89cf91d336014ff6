"""Seeded bar-to-tick generator: reproducible ticks from H1 bars.

quantmesh ships no real tick data. The replay source makes its ticks from real hourly
ask bars with the algorithm below. The ticks are consistent with the bars they come
from, and every other detail is a documented random model, **not a market
observation**. Anything measured on these ticks (slippage, tick-level signals, spreads)
measures this model.

Algorithm
---------
Parameters: ``seed``, ``stream``, mean ticks per bar ``m`` (default 100), typical spread
``s`` points, spread log-deviation ``σs`` (default 0.25), path noise ``κ`` (default 0.5),
chunk size ``K`` bars (default 64) and bar length ``D`` ms (default 3,600,000).

The bars are cut into chunks of ``K`` consecutive bars. Chunk ``c`` draws all its
randomness from ``numpy.random.default_rng([seed, stream, c])`` (PCG64), always in this
order: counts (Poisson, one per bar), order of extremes (uniform, one per bar), extreme
positions (uniform, two per bar), time gaps (exponential, one per tick), path steps
(normal, one per tick) and spread draws (integers, one per tick). So a chunk can be
generated on its own, in any order, and gives the same bits every time. Memory is
bounded by one chunk.

1. **Tick count.** Let ``r_i = volume_i / mean(volume)`` be bar i's relative tick
   volume, with the mean taken over all the bars given (``r_i = 1`` if every volume is
   0). Then ``n_i = 4 + Poisson(max(m·r_i − 4, 0))``, capped at ``D``. Busier bars get
   more ticks, every bar gets at least 4, and ``E[n_i] = max(m·r_i, 4)``. A chunk's
   counts are its RNG's first draw, so the counts of all bars (and their cumulative
   sum, the first seq of each bar) are known without generating any tick.
2. **Extremes.** With probability 1/2 the bar visits its high before its low, otherwise
   the low first. The first extreme sits at tick ``j`` and the second at tick ``k``,
   ``1 ≤ j < k ≤ n−2``, a uniformly random pair of distinct interior ticks.
3. **Times.** Tick 0 is at the bar's open time. Draw ``n`` gaps ``g ~ Exp(1)``, let
   ``f_p = (g_1+…+g_p) / (g_1+…+g_n)`` and put tick ``p`` at
   ``open + p + ⌊f_p·(D−n)⌋`` (evaluated in float64). The arrivals are those of a Poisson
   process given ``n`` ticks. The times are integer ms, strictly increasing, and all
   inside ``[open, open + D)``.
4. **Ask path.** The path is made in tick time (the tick index is its clock). The nodes
   ``(0, open)``, ``(j, first extreme)``, ``(k, second extreme)`` and ``(n−1, close)``
   are joined by Brownian bridges:
   ``a + (b−a)·τ + σ·(W_p − W_s − τ·(W_e − W_s))``, with ``τ = (p−s)/(e−s)``, ``W`` a
   standard normal random walk and ``σ = κ·(high − low)/√n``. The values are clipped
   to ``[low, high]`` and rounded to integer points, and the nodes are then set exactly.
   So the bar opens, closes, and touches its high and low exactly as recorded, and
   never leaves its range.
5. **Spread.** The spread of each tick is log-normal around ``s``, drawn through a
   table. Let ``Q_i = max(1, round(s·exp(σs·Φ⁻¹((i + ½)/1024))))`` for
   ``i = 0..1023``, the 1024 mid-quantiles. Each tick takes ``spread = Q_u`` with
   ``u`` uniform in ``0..1023``, and ``bid = ask − spread``, so ``ask > bid`` always.
   The shipped bars are ask bars, which is why the ask is the price that follows the
   bar.
6. **Volume.** Tick ``p`` carries ``volume · g_{p+1} / (g_1+…+g_n)``. That is the
   bar's volume in proportion to the time its quote stands, using the gaps of step 3.
   The tick volumes add up to the bar's volume within float rounding.

Not modelled: intra-bar volatility clustering, spread widening at rollover or on news,
jumps, and any link between the spread and the path.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    # Only for annotations: sources.py imports this module to build ReplaySource.
    from quantmesh.services.marketdata.sources import Bars

H1_MS = 3_600_000
MIN_TICKS_PER_BAR = 4  # open, two extremes and close each need their own tick
SPREAD_QUANTILES = 1024


@dataclass(frozen=True, slots=True, eq=False)
class TickChunk:
    """The ticks of one chunk of bars: one symbol, in time order.

    Attributes
    ----------
    index:
        Chunk number.
    first_seq:
        Seq of the first row within this symbol's own stream.
    time_msc, ask, bid:
        int64 UTC epoch ms and int64 price points.
    volume:
        float64 volume of each tick.
    """

    index: int
    first_seq: int
    time_msc: np.ndarray
    ask: np.ndarray
    bid: np.ndarray
    volume: np.ndarray

    def __len__(self) -> int:
        return len(self.time_msc)


class BarTickGenerator:
    """Generate a symbol's ticks from its bars, chunk by chunk, with the algorithm above.

    Parameters
    ----------
    bars:
        The symbol's bars, oldest first. Their opens must be at least ``bar_ms`` apart,
        so that every bar's ticks come before the next bar's.
    seed, stream:
        RNG entropy. Chunk ``c`` uses ``default_rng([seed, stream, c])``. ``ReplaySource``
        sets ``stream`` from the symbol name, so that symbols don't share their noise.
    mean_ticks_per_bar:
        Mean tick count of a bar of average volume (``m``).
    spread_points:
        Typical (median) spread in points (``s``).
    spread_sigma:
        Log-normal deviation of the spread (``σs``).
    path_noise:
        Bridge noise ``κ`` relative to the bar's range.
    chunk_bars:
        Bars per chunk (``K``). It is part of the seed: other values give other ticks.
    bar_ms:
        Bar length ``D`` in ms.
    """

    def __init__(
        self,
        bars: Bars,
        *,
        seed: int,
        stream: int = 0,
        mean_ticks_per_bar: float = 100,
        spread_points: int = 12,
        spread_sigma: float = 0.25,
        path_noise: float = 0.5,
        chunk_bars: int = 64,
        bar_ms: int = H1_MS,
    ) -> None:
        if seed < 0 or stream < 0:
            raise ValueError(f"seed and stream must be >= 0, got {seed} and {stream}")
        if mean_ticks_per_bar < MIN_TICKS_PER_BAR:
            raise ValueError(
                f"mean_ticks_per_bar must be >= {MIN_TICKS_PER_BAR}, got {mean_ticks_per_bar}"
            )
        if spread_points < 1 or spread_sigma < 0 or path_noise < 0:
            raise ValueError("spread_points must be >= 1; spread_sigma, path_noise >= 0")
        if chunk_bars < 1 or bar_ms < MIN_TICKS_PER_BAR:
            raise ValueError(f"chunk_bars must be >= 1 and bar_ms >= {MIN_TICKS_PER_BAR}")
        _check_bars(bars, bar_ms)
        self.bars = bars
        self.seed, self.stream = seed, stream
        self.spread_points = spread_points
        self.spread_sigma = spread_sigma
        self.path_noise = path_noise
        self.chunk_bars, self.bar_ms = chunk_bars, bar_ms
        self._spread_table = spread_table(spread_points, spread_sigma)

        volume = np.asarray(bars.tick_volume, dtype=np.float64)
        mean_volume = float(volume.mean()) if len(volume) else 0.0
        relative = volume / mean_volume if mean_volume > 0 else np.ones_like(volume)
        self._lam = np.maximum(mean_ticks_per_bar * relative - MIN_TICKS_PER_BAR, 0.0)
        self.n_chunks = -(-len(bars) // chunk_bars)
        counts = [self._draw_counts(self._rng(c), c) for c in range(self.n_chunks)]
        self.counts = np.concatenate(counts) if counts else np.zeros(0, np.int64)
        self.first_seq = np.concatenate(([0], np.cumsum(self.counts)))
        self.counts.flags.writeable = False
        self.first_seq.flags.writeable = False
        self.total = int(self.first_seq[-1])

    def chunk_bounds(self, c: int) -> tuple[int, int]:
        """Bar index range ``[b0, b1)`` of chunk ``c``."""
        b0 = c * self.chunk_bars
        return b0, min(b0 + self.chunk_bars, len(self.bars))

    def chunk_of_seq(self, seq: int) -> int:
        """The chunk holding tick ``seq`` (0 <= seq < total), in O(log n)."""
        bar = int(np.searchsorted(self.first_seq, seq, side="right")) - 1
        return bar // self.chunk_bars

    def chunk(self, c: int) -> TickChunk:
        """Generate chunk ``c`` (vectorised over its bars, no per-tick Python)."""
        if not 0 <= c < self.n_chunks:
            raise IndexError(f"chunk {c} out of range 0..{self.n_chunks - 1}")
        b0, b1 = self.chunk_bounds(c)
        rng = self._rng(c)
        self._draw_counts(rng, c)  # consumes the counts draw; self.counts holds the result
        n = self.counts[b0:b1]
        nb, total = b1 - b0, int(n.sum())
        high_first = rng.random(nb) < 0.5
        u = rng.random((2, nb))
        gaps = rng.standard_exponential(total)
        steps = rng.standard_normal(total)
        spread_index = rng.integers(0, SPREAD_QUANTILES, total, dtype=np.uint16)

        bars = self.bars
        o, h, lo, cl = bars.open[b0:b1], bars.high[b0:b1], bars.low[b0:b1], bars.close[b0:b1]
        starts = self.first_seq[b0:b1] - self.first_seq[b0]  # each bar's first row
        rows = np.arange(total)

        # Times (step 3). One cumulative sum serves all bars: the normalisation subtracts
        # each bar's base. Float rounding is monotone, so the floor starts at exactly 0 and
        # never decreases within a bar. It stays below D - n + 1, so with p <= n - 1 every
        # tick lands before open + D.
        g0 = np.empty(total + 1)
        g0[0] = 0.0
        np.cumsum(gaps, out=g0[1:])
        base = g0[starts]
        span = g0[starts + n] - base
        scale = (self.bar_ms - n) / span
        elapsed = np.floor(g0[:total] * np.repeat(scale, n) - np.repeat(base * scale, n))
        time_msc = np.repeat(bars.time_ms[b0:b1] - starts, n) + rows + elapsed.astype(np.int64)

        # Extremes (step 2): ticks j < k, a uniform pair of distinct interior ticks.
        p1 = 1 + np.floor(u[0] * (n - 2)).astype(np.int64)
        p2 = 1 + np.floor(u[1] * (n - 3)).astype(np.int64)
        p2 += p2 >= p1
        j, k = np.minimum(p1, p2), np.maximum(p1, p2)
        x1, x2 = np.where(high_first, h, lo), np.where(high_first, lo, h)

        # Ask path (step 4). The bridge a + (b-a)τ + σ(W_p - W_s - τ(W_e - W_s)) equals
        # σW_p plus the linear interpolation of (node value - σW) between the nodes. So one
        # np.interp over the chunk's nodes does every bar at once. Node rows increase
        # across bars, and no tick lies between one bar's close and the next bar's open.
        # A constant added to W cancels out, so the chunk-wide walk serves every bar.
        walk = np.cumsum(steps)
        node_rows = np.stack([starts, starts + j, starts + k, starts + n - 1], axis=1).ravel()
        node_val = np.stack([o, x1, x2, cl], axis=1).ravel()
        sigma = self.path_noise * (h - lo) / np.sqrt(n)
        anchor = node_val - np.repeat(sigma, 4) * walk[node_rows]
        path = np.interp(rows, node_rows, anchor) + np.repeat(sigma, n) * walk
        path = np.clip(path, np.repeat(lo, n), np.repeat(h, n))
        ask = np.rint(path).astype(np.int64)
        ask[node_rows] = node_val

        bid = ask - self._spread_table[spread_index]  # step 5

        # Volume (step 6): tick p gets the bar's volume times (gap after p) / (sum of gaps).
        volume_per_gap = np.asarray(bars.tick_volume[b0:b1], np.float64) / span
        volume = gaps * np.repeat(volume_per_gap, n)

        for column in (time_msc, ask, bid, volume):
            column.flags.writeable = False  # batches share these buffers; keep them intact
        return TickChunk(c, int(self.first_seq[b0]), time_msc, ask, bid, volume)

    def chunks(self, from_seq: int = 0) -> Iterator[TickChunk]:
        """Chunks from the one holding ``from_seq``, the first cut to start there."""
        if not 0 <= from_seq <= self.total:
            raise ValueError(f"from_seq must be 0..{self.total}, got {from_seq}")
        if from_seq == self.total:
            return
        first = self.chunk_of_seq(from_seq)
        chunk = self.chunk(first)
        cut = from_seq - chunk.first_seq
        yield TickChunk(
            first,
            from_seq,
            chunk.time_msc[cut:],
            chunk.ask[cut:],
            chunk.bid[cut:],
            chunk.volume[cut:],
        )
        for c in range(first + 1, self.n_chunks):
            yield self.chunk(c)

    def _rng(self, c: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.stream, c])

    def _draw_counts(self, rng: np.random.Generator, c: int) -> np.ndarray:
        b0, b1 = self.chunk_bounds(c)
        extra = rng.poisson(self._lam[b0:b1]).astype(np.int64)
        return MIN_TICKS_PER_BAR + np.minimum(extra, self.bar_ms - MIN_TICKS_PER_BAR)


def spread_table(spread_points: float, spread_sigma: float) -> np.ndarray:
    """The spread quantile table of step 5: ``Q_i`` for ``i = 0..1023``, int64 points >= 1."""
    unit = NormalDist()
    z = np.array([unit.inv_cdf((i + 0.5) / SPREAD_QUANTILES) for i in range(SPREAD_QUANTILES)])
    return np.maximum(np.rint(spread_points * np.exp(spread_sigma * z)), 1.0).astype(np.int64)


def _check_bars(bars: Bars, bar_ms: int) -> None:
    o, h, lo, c = bars.open, bars.high, bars.low, bars.close
    broken = np.flatnonzero((h < np.maximum(o, c)) | (lo > np.minimum(o, c)))
    if len(broken):
        raise ValueError(f"bar {broken[0]} breaks low <= open, close <= high")
    crowded = np.flatnonzero(np.diff(bars.time_ms) < bar_ms)
    if len(crowded):
        bad = crowded[0] + 1
        raise ValueError(f"bar {bad} opens less than {bar_ms} ms after the bar before it")
    volume = np.asarray(bars.tick_volume, dtype=np.float64)
    if not bool(np.all(np.isfinite(volume) & (volume >= 0))):
        raise ValueError("tick volumes must be finite and >= 0")
