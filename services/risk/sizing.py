"""Position sizing in exact decimals: currency conversion, value of a point, lots.

The size of a position is the volume whose loss at the stop equals the risk budget::

    volume = risk_amount / (stop_distance_points × value_per_point_per_lot)
    value_per_point_per_lot = contract_size × point × rate(quote → account currency)

``point`` is ``10**-digits`` of the symbol, so ``contract_size × point`` is what one
point is worth for one lot in the symbol's quote (profit) currency; the rate converts
that into the account currency. Rates come from :class:`Quotes`, the current bid/ask of
symbols, at their mid price. A rate is kept as an exact fraction ``num / den`` of
products of mids (``1 / USDJPY`` is ``1 / 150.000``), and the one division happens last,
so the arithmetic is exact up to that division and the rounding down of the volume.

Money and lots are :class:`decimal.Decimal`, never binary floats. A lot size is always
rounded **down** to the symbol's volume step: rounding never takes more risk than the
budget allows, and :func:`size_position` proves it with an exact comparison.
Nothing here imports grpc.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_UP, Decimal, localcontext
from typing import Protocol

from quantmesh.runtime.errors import FailedPrecondition, InvalidArgument

ZERO = Decimal(0)
ONE = Decimal(1)
# Enough significant digits that the products of a handful of 5-digit prices, volumes
# and contract sizes are exact; only the final division rounds.
PRECISION = 60
# Money reported by risk carries at most nine decimals, as quantmesh.common.v1.Money.
MONEY_QUANTUM = Decimal("0.000000001")


class SymbolSpec(Protocol):
    """What sizing needs to know about a symbol.

    ``quantmesh.services.marketdata.sources.Symbol`` satisfies it. Float fields are
    read through their shortest ``repr`` (``0.01`` → ``Decimal("0.01")``), so the
    decimals are the ones a person wrote, not the binary approximation.
    """

    @property
    def name(self) -> str: ...
    @property
    def currency_base(self) -> str: ...
    @property
    def currency_profit(self) -> str: ...
    @property
    def digits(self) -> int: ...
    @property
    def trade_contract_size(self) -> float | Decimal: ...
    @property
    def volume_min(self) -> float | Decimal: ...
    @property
    def volume_max(self) -> float | Decimal: ...
    @property
    def volume_step(self) -> float | Decimal: ...


def to_decimal(value: float | Decimal) -> Decimal:
    """``value`` as a Decimal; a float through its shortest repr. Non-finite → InvalidArgument."""
    result = value if isinstance(value, Decimal) else Decimal(repr(float(value)))
    if not result.is_finite():
        raise InvalidArgument(f"expected a finite number, got {value!r}")
    return result


def fmt(value: Decimal) -> str:
    """Plain decimal string without exponent or trailing zeros: ``1.2500`` → ``1.25``."""
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def points_to_price(points: int, digits: int) -> Decimal:
    """``points × 10**-digits`` exactly: ``108123`` at 5 digits → ``1.08123``."""
    return Decimal(points).scaleb(-digits)


def quantize_down(volume: Decimal, step: Decimal) -> Decimal:
    """The largest multiple of ``step`` not above ``volume`` (``volume ≥ 0``)."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        steps = (volume / step).to_integral_value(rounding=ROUND_DOWN)
        return (steps * step).quantize(step)


def quantize_up(volume: Decimal, step: Decimal) -> Decimal:
    """The smallest multiple of ``step`` not below ``volume`` (``volume ≥ 0``)."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        steps = (volume / step).to_integral_value(rounding=ROUND_CEILING)
        return (steps * step).quantize(step)


@dataclass(frozen=True, slots=True)
class Quote:
    """Current bid and ask of one symbol; ``1 base = price profit``."""

    symbol: str
    currency_base: str
    currency_profit: str
    bid: Decimal
    ask: Decimal

    def __post_init__(self) -> None:
        if not (isinstance(self.bid, Decimal) and isinstance(self.ask, Decimal)):
            raise InvalidArgument(f"quote of {self.symbol}: bid and ask must be Decimal")
        if not (ZERO < self.bid <= self.ask):
            raise InvalidArgument(
                f"quote of {self.symbol}: need 0 < bid <= ask, got bid {self.bid} ask {self.ask}"
            )

    @classmethod
    def from_points(
        cls, symbol: str, base: str, profit: str, bid_points: int, ask_points: int, digits: int
    ) -> Quote:
        """A quote from integer points, as ticks carry prices."""
        return cls(
            symbol,
            base,
            profit,
            points_to_price(bid_points, digits),
            points_to_price(ask_points, digits),
        )

    @property
    def mid(self) -> Decimal:
        """``(bid + ask) / 2``, exact (halving a finite decimal terminates)."""
        with localcontext() as ctx:
            ctx.prec = PRECISION
            return (self.bid + self.ask) / 2


@dataclass(frozen=True, slots=True)
class Conversion:
    """An exact exchange rate ``num / den`` from ``source`` to ``target`` currency.

    ``amount_in_target = amount_in_source × num / den``. ``path`` says which quotes the
    rate came from, e.g. ``1 / USDJPY 150.000``, for the verdict's reason.
    """

    source: str
    target: str
    num: Decimal
    den: Decimal
    path: str

    @property
    def rate(self) -> Decimal:
        """``num / den``, rounded to 60 significant digits when it does not terminate."""
        with localcontext() as ctx:
            ctx.prec = PRECISION
            return self.num / self.den


class Quotes:
    """The current quotes risk converts currencies with, keyed by symbol name.

    Conversion follows quotes as edges of a currency graph: a quote ``BASEPROFIT`` at
    mid ``m`` converts BASE→PROFIT at ``m`` and PROFIT→BASE at ``1/m``. The shortest
    chain wins (one quote for EURGBP in a USD account: GBPUSD); ties go to the
    alphabetically first symbols, so the choice is reproducible.
    """

    def __init__(self, quotes: Iterable[Quote] = ()) -> None:
        self._quotes: dict[str, Quote] = {quote.symbol: quote for quote in quotes}

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._quotes

    def __iter__(self) -> Iterator[Quote]:
        return iter(self._quotes.values())

    def __len__(self) -> int:
        return len(self._quotes)

    def get(self, symbol: str) -> Quote | None:
        """The quote of ``symbol``, or None."""
        return self._quotes.get(symbol)

    def with_quote(self, quote: Quote) -> Quotes:
        """These quotes plus ``quote`` unless its symbol is already quoted."""
        if quote.symbol in self._quotes:
            return self
        return Quotes([*self._quotes.values(), quote])

    def conversion(self, source: str, target: str) -> Conversion:
        """The rate from ``source`` to ``target`` currency.

        Raises
        ------
        FailedPrecondition
            No chain of quotes links the two currencies: risk cannot value a point, so it
            cannot size the position.
        """
        if source == target:
            return Conversion(source, target, ONE, ONE, f"1 ({source} is the account currency)")
        edges = self._edges()
        # Breadth-first search: the fewest quotes in the chain, each step exact.
        previous: dict[str, tuple[str, Quote, bool]] = {}
        queue = deque([source])
        while queue and target not in previous:
            currency = queue.popleft()
            for neighbour, quote, forward in edges.get(currency, ()):
                if neighbour != source and neighbour not in previous:
                    previous[neighbour] = (currency, quote, forward)
                    queue.append(neighbour)
        if target not in previous:
            have = ", ".join(sorted(self._quotes)) or "none"
            raise FailedPrecondition(
                f"no conversion from {source} to {target}: no chain of quotes links them "
                f"(quotes: {have}); supply e.g. {source}{target} or {target}{source}"
            )
        steps: list[tuple[Quote, bool]] = []
        currency = target
        while currency != source:
            currency, quote, forward = previous[currency]
            steps.append((quote, forward))
        steps.reverse()
        num, den, parts = ONE, ONE, []
        with localcontext() as ctx:
            ctx.prec = PRECISION
            for quote, forward in steps:
                price = _price_text(quote)
                if forward:
                    num *= quote.mid
                    parts.append(price)
                else:
                    den *= quote.mid
                    parts.append(f"1 / {price}")
        return Conversion(source, target, num, den, " × ".join(parts))

    def _edges(self) -> Mapping[str, list[tuple[str, Quote, bool]]]:
        edges: dict[str, list[tuple[str, Quote, bool]]] = {}
        for quote in sorted(self._quotes.values(), key=lambda q: q.symbol):
            edges.setdefault(quote.currency_base, []).append((quote.currency_profit, quote, True))
            edges.setdefault(quote.currency_profit, []).append((quote.currency_base, quote, False))
        return edges


def _price_text(quote: Quote) -> str:
    exponent = min(quote.bid.as_tuple().exponent, quote.ask.as_tuple().exponent)
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    return f"{quote.symbol} {quote.mid:.{places}f}"


def value_per_point_per_lot(symbol: SymbolSpec, conversion: Conversion) -> Decimal:
    """Account-currency value of one point for one lot: ``contract_size × point × rate``."""
    with localcontext() as ctx:
        ctx.prec = PRECISION
        per_point_quote = to_decimal(symbol.trade_contract_size) * points_to_price(1, symbol.digits)
        return per_point_quote * conversion.num / conversion.den


def loss_at_stop(
    volume: Decimal, stop_points: int, symbol: SymbolSpec, conversion: Conversion
) -> Decimal:
    """Money lost, in the account currency, when ``volume`` lots are stopped out.

    Rounded **up** to nine decimals (the resolution of Money), so a reported risk is never
    smaller than the real one.
    """
    with localcontext() as ctx:
        ctx.prec = PRECISION
        in_quote = volume * stop_points * to_decimal(symbol.trade_contract_size)
        exact = in_quote * points_to_price(1, symbol.digits) * conversion.num / conversion.den
        return exact.quantize(MONEY_QUANTUM, rounding=ROUND_UP)


@dataclass(frozen=True, slots=True)
class Sizing:
    """The arithmetic of one position size, kept for the verdicts and the audit log.

    Attributes
    ----------
    budget:
        Money the trade may lose at its stop, account currency (after scaling).
    stop_points:
        Distance from the reference price to the stop, in points.
    value_per_point:
        Account-currency value of one point for one lot.
    conversion:
        The quote → account currency rate used.
    raw_volume:
        ``budget / (stop_points × value_per_point)`` before any rounding.
    volume:
        ``raw_volume`` rounded down to the step and capped at ``max_volume``; 0 when it is
        below ``min_volume`` (the signal is then rejected, never sized up).
    min_volume, max_volume, step:
        Effective bounds: the tighter of the account's limits and the symbol's, on the step.
    capped:
        True when ``volume`` was cut to ``max_volume``.
    risk_amount:
        Money lost at the stop with ``volume`` (0 when ``volume`` is 0).
    min_volume_risk:
        Money ``min_volume`` would lose at the stop: what taking the minimum would risk.
    """

    budget: Decimal
    stop_points: int
    value_per_point: Decimal
    conversion: Conversion
    raw_volume: Decimal
    volume: Decimal
    min_volume: Decimal
    max_volume: Decimal
    step: Decimal
    capped: bool
    risk_amount: Decimal
    min_volume_risk: Decimal

    @property
    def below_min(self) -> bool:
        """True when even the smallest allowed volume would risk more than the budget."""
        return self.volume == ZERO


def size_position(
    *,
    budget: Decimal,
    stop_points: int,
    symbol: SymbolSpec,
    conversion: Conversion,
    min_volume: Decimal,
    max_volume: Decimal,
) -> Sizing:
    """Size a position so that its loss at the stop is at most ``budget``.

    Parameters
    ----------
    budget:
        Largest loss allowed at the stop, account currency, ``>= 0``.
    stop_points:
        Stop distance from the reference price in points, ``> 0``.
    symbol:
        Contract size, digits, volume step and volume bounds of the traded symbol.
    conversion:
        Rate from ``symbol.currency_profit`` to the account currency.
    min_volume, max_volume:
        The account's volume limits; the symbol's bounds apply as well.

    Returns
    -------
    Sizing
        ``volume`` is on the step, within the bounds, and never loses more than ``budget``
        at the stop; it is 0 when the smallest allowed volume would.
    """
    if stop_points <= 0:
        raise InvalidArgument(f"stop distance must be positive, got {stop_points} points")
    if budget < ZERO:
        raise InvalidArgument(f"risk budget must not be negative, got {budget}")
    step = to_decimal(symbol.volume_step)
    low = quantize_up(max(min_volume, to_decimal(symbol.volume_min)), step)
    high = quantize_down(min(max_volume, to_decimal(symbol.volume_max)), step)
    contract = to_decimal(symbol.trade_contract_size)
    point = points_to_price(1, symbol.digits)
    with localcontext() as ctx:
        ctx.prec = PRECISION
        # One point of one lot costs contract × point × num / den in the account
        # currency; dividing last keeps everything before it exact.
        cost_num = stop_points * contract * point * conversion.num
        raw = budget * conversion.den / cost_num
        volume = quantize_down(raw, step)
        # The division above rounds at 60 digits; an exact cross-multiplied check
        # guarantees that rounding never pushed the volume over the budget.
        while volume > ZERO and volume * cost_num > budget * conversion.den:
            volume -= step
    capped = volume > high
    if capped:
        volume = high
    if volume < low or high < low:
        volume, capped = ZERO, False
    return Sizing(
        budget=budget,
        stop_points=stop_points,
        value_per_point=value_per_point_per_lot(symbol, conversion),
        conversion=conversion,
        raw_volume=raw,
        volume=volume.quantize(step),
        min_volume=low,
        max_volume=high,
        step=step,
        capped=capped,
        risk_amount=loss_at_stop(volume, stop_points, symbol, conversion) if volume else ZERO,
        min_volume_risk=loss_at_stop(low, stop_points, symbol, conversion),
    )
