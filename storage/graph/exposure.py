"""Exposure per currency, exact: what the open positions owe and own in each currency.

A position in ``BASEQUOTE`` is two legs. Buying ``v`` lots of contract size ``c`` at
price ``p`` receives ``v × c`` BASE and pays ``v × c × p`` QUOTE; selling is the reverse::

    long : BASE += v × c        QUOTE −= v × c × p
    short: BASE −= v × c        QUOTE += v × c × p

Adding the legs of every position gives each currency's **net** exposure; adding their
absolute values gives its **gross** exposure (how much of the currency the positions
move, hedged or not). Which price ``p`` means what:

- the **open price** gives the cash flows the positions made. Converted into the account
  currency at current quotes, the nets then add up to the unrealized profit: at the open
  prices themselves they add up to exactly 0, a check the tests use;
- the **current price** gives exposure marked to market; the nets then add up to 0.

Conversion into the account currency reuses risk's :class:`~quantmesh.services.risk.
sizing.Quotes`: direct (``EURUSD`` for EUR in a USD account), inverse (``USDJPY`` for JPY:
``1 / 150``) or a cross along the shortest chain of quoted symbols in the currency graph
(``EURGBP`` exposure in a JPY account: ``GBPUSD × USDJPY``), each rate an exact fraction of
mid prices. Native amounts are exact decimals (products of finite decimals); amounts in the
account currency are rounded half-even to nine decimals, the resolution of Money.
Nothing here does I/O; the currencies of each symbol come from the graph
(:meth:`~.port.GraphPort.symbols`) or from symbol specs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from enum import StrEnum

from quantmesh.runtime.errors import InvalidArgument
from quantmesh.services.risk.sizing import (
    MONEY_QUANTUM,
    PRECISION,
    ZERO,
    Conversion,
    Quote,
    Quotes,
    fmt,
)
from quantmesh.storage.graph.port import CURRENCY, SymbolEdge

__all__ = [
    "CurrencyAmounts",
    "CurrencyExposure",
    "ExposureReport",
    "OpenPosition",
    "Side",
    "aggregate_exposure",
    "currency_legs",
    "exposure_by_currency",
    "quotes_from_prices",
]


class Side(StrEnum):
    """A position's direction."""

    BUY = "BUY"
    SELL = "SELL"


@dataclass(frozen=True, slots=True)
class OpenPosition:
    """What exposure needs of an open position.

    Attributes
    ----------
    symbol:
        The symbol, e.g. ``EURUSD``; its currencies come from the graph.
    side:
        BUY (long) or SELL (short).
    volume:
        Lots, ``> 0``.
    contract_size:
        Units of the base currency in one lot (100 000 for the majors).
    price:
        Quote currency per base unit: the open price or the current one (module docstring).
    """

    symbol: str
    side: Side
    volume: Decimal
    contract_size: Decimal
    price: Decimal

    def __post_init__(self) -> None:
        object.__setattr__(self, "side", Side(self.side))
        for name in ("volume", "contract_size", "price"):
            value = getattr(self, name)
            if not isinstance(value, Decimal) or not value.is_finite() or value <= ZERO:
                raise InvalidArgument(
                    f"position in {self.symbol}: {name} must be a positive finite Decimal, "
                    f"got {value!r}"
                )


@dataclass(frozen=True, slots=True)
class CurrencyAmounts:
    """Gross and net exposure in one currency, in that currency."""

    gross: Decimal = ZERO
    net: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class CurrencyExposure:
    """One currency's exposure, native and in the account currency.

    ``rate`` is the conversion used (its ``path`` names the quotes, e.g.
    ``1 / USDJPY 150.000``); ``gross_in_account`` is ``gross × rate``, never negative.
    """

    currency: str
    gross: Decimal
    net: Decimal
    rate: Conversion
    gross_in_account: Decimal
    net_in_account: Decimal


@dataclass(frozen=True, slots=True)
class ExposureReport:
    """Every currency the positions touch, sorted by code, in ``account_currency``."""

    account_currency: str
    currencies: tuple[CurrencyExposure, ...]

    def __getitem__(self, currency: str) -> CurrencyExposure:
        for exposure in self.currencies:
            if exposure.currency == currency:
                return exposure
        raise KeyError(currency)

    def __contains__(self, currency: object) -> bool:
        return any(exposure.currency == currency for exposure in self.currencies)

    @property
    def net_total(self) -> Decimal:
        """Sum of the nets in the account currency: the unrealized profit at open prices."""
        return sum((e.net_in_account for e in self.currencies), ZERO)

    @property
    def gross_total(self) -> Decimal:
        """Sum of the gross exposures in the account currency."""
        return sum((e.gross_in_account for e in self.currencies), ZERO)

    def summary(self) -> dict[str, str]:
        """Net exposure per currency in the account currency, as plain strings, for a log line."""
        return {e.currency: fmt(e.net_in_account) for e in self.currencies}


def currency_legs(position: OpenPosition, edge: SymbolEdge) -> tuple[tuple[str, Decimal], ...]:
    """The two legs of ``position``: ``((base, ±v×c), (quote, ∓v×c×p))``, exact."""
    if edge.symbol != position.symbol:
        raise InvalidArgument(f"edge {edge.symbol} is not the symbol of a {position.symbol} trade")
    sign = 1 if position.side is Side.BUY else -1
    with localcontext() as ctx:
        ctx.prec = PRECISION
        units = position.volume * position.contract_size
        return ((edge.base, sign * units), (edge.quote, -sign * units * position.price))


def exposure_by_currency(
    positions: Iterable[OpenPosition], symbols: Iterable[SymbolEdge]
) -> dict[str, CurrencyAmounts]:
    """Gross and net exposure per currency, in that currency, sorted by code.

    Raises
    ------
    InvalidArgument
        A position's symbol is not among ``symbols``: its currencies are unknown.
    """
    edges = {edge.symbol: edge for edge in symbols}
    gross: dict[str, Decimal] = {}
    net: dict[str, Decimal] = {}
    with localcontext() as ctx:
        ctx.prec = PRECISION
        for position in positions:
            edge = edges.get(position.symbol)
            if edge is None:
                known = ", ".join(sorted(edges)) or "none"
                raise InvalidArgument(
                    f"{position.symbol} is not in the currency graph (symbols: {known}); "
                    "upsert it before aggregating its exposure"
                )
            for currency, amount in currency_legs(position, edge):
                gross[currency] = gross.get(currency, ZERO) + abs(amount)
                net[currency] = net.get(currency, ZERO) + amount
    return {c: CurrencyAmounts(gross[c], net[c]) for c in sorted(gross)}


def quotes_from_prices(
    prices: Mapping[str, Decimal | tuple[Decimal, Decimal]], symbols: Iterable[SymbolEdge]
) -> Quotes:
    """Risk's :class:`Quotes` from prices by symbol, with currencies from the graph.

    A price is one Decimal (bid = ask) or a ``(bid, ask)`` pair. Prices of symbols the
    graph does not have are ignored: without currencies they convert nothing.
    """
    quotes = []
    for edge in symbols:
        price = prices.get(edge.symbol)
        if price is None:
            continue
        bid, ask = price if isinstance(price, tuple) else (price, price)
        quotes.append(Quote(edge.symbol, edge.base, edge.quote, bid, ask))
    return Quotes(quotes)


def aggregate_exposure(
    positions: Iterable[OpenPosition],
    symbols: Iterable[SymbolEdge],
    quotes: Quotes,
    account_currency: str,
) -> ExposureReport:
    """Per-currency gross and net exposure, native and converted into ``account_currency``.

    Parameters
    ----------
    positions:
        The open positions (hedged positions in one symbol count separately).
    symbols:
        The currency graph's edges: the base and quote of each position's symbol.
    quotes:
        Current quotes; conversions follow the shortest chain of them (module docstring).
    account_currency:
        ISO code of the account currency.

    Raises
    ------
    InvalidArgument
        An unknown symbol or a malformed account currency.
    FailedPrecondition
        No chain of quotes links a currency to the account currency.
    """
    if not CURRENCY.fullmatch(account_currency):
        raise InvalidArgument(f"account currency must be an ISO 4217 code: {account_currency!r}")
    rows = []
    for currency, amounts in exposure_by_currency(positions, symbols).items():
        rate = quotes.conversion(currency, account_currency)
        rows.append(
            CurrencyExposure(
                currency=currency,
                gross=amounts.gross,
                net=amounts.net,
                rate=rate,
                gross_in_account=_convert(amounts.gross, rate),
                net_in_account=_convert(amounts.net, rate),
            )
        )
    return ExposureReport(account_currency, tuple(rows))


def _convert(amount: Decimal, rate: Conversion) -> Decimal:
    with localcontext() as ctx:
        ctx.prec = PRECISION
        exact = amount * rate.num / rate.den
        return exact.quantize(MONEY_QUANTUM, rounding=ROUND_HALF_EVEN)
