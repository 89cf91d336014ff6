"""The one place where market data's protobuf messages meet its domain types."""

from __future__ import annotations

import numpy as np

from quantmesh.common.v1 import common_pb2
from quantmesh.marketdata.v1 import marketdata_pb2
from quantmesh.services.marketdata.core import Subscription, Timeframe
from quantmesh.services.marketdata.sources import Bars, Symbol, TickColumns

_TIMEFRAMES = {
    common_pb2.TIMEFRAME_M1: Timeframe.M1,
    common_pb2.TIMEFRAME_M5: Timeframe.M5,
    common_pb2.TIMEFRAME_M15: Timeframe.M15,
    common_pb2.TIMEFRAME_M30: Timeframe.M30,
    common_pb2.TIMEFRAME_H1: Timeframe.H1,
    common_pb2.TIMEFRAME_H4: Timeframe.H4,
    common_pb2.TIMEFRAME_D1: Timeframe.D1,
}
_TIMEFRAME_NAMES = {domain: proto for proto, domain in _TIMEFRAMES.items()}


def timeframe_from_proto(value: int) -> Timeframe | None:
    """Map the contract's enum; None for UNSPECIFIED or an unknown number."""
    return _TIMEFRAMES.get(common_pb2.Timeframe.ValueType(value))


def symbol_to_proto(symbol: Symbol) -> common_pb2.SymbolInfo:
    return common_pb2.SymbolInfo(
        name=symbol.name,
        description=symbol.description,
        currency_base=symbol.currency_base,
        currency_profit=symbol.currency_profit,
        digits=symbol.digits,
        point=symbol.point,
        trade_contract_size=symbol.trade_contract_size,
        volume_min=symbol.volume_min,
        volume_max=symbol.volume_max,
        volume_step=symbol.volume_step,
        spread=symbol.spread_points,
    )


def subscription_from_proto(message: marketdata_pb2.Subscription) -> Subscription:
    return Subscription(
        symbols=[name.strip() for name in message.symbols],
        from_seq=message.from_seq,
        batch_size=message.batch_size,
        speed=message.speed,
        initial_credit=message.initial_credit,
    )


def rates_to_proto(symbol: Symbol, timeframe: Timeframe, bars: Bars) -> marketdata_pb2.RateBatch:
    return marketdata_pb2.RateBatch(
        symbol=symbol.name,
        digits=symbol.digits,
        timeframe=_TIMEFRAME_NAMES[timeframe],
        time_ms=bars.time_ms.tolist(),
        open=bars.open.tolist(),
        high=bars.high.tolist(),
        low=bars.low.tolist(),
        close=bars.close.tolist(),
        tick_volume=bars.tick_volume.tolist(),
    )


class TickBatchEncoder:
    """Encodes :class:`TickColumns` of one stream into ``SubscribeResponse`` messages."""

    def __init__(self, symbols: tuple[Symbol, ...], total: int) -> None:
        self._names = [symbol.name for symbol in symbols]
        self._digits = [symbol.digits for symbol in symbols]
        self._total = total

    def __call__(self, columns: TickColumns) -> marketdata_pb2.SubscribeResponse:
        # Building from lists in the constructor is the fastest path through upb
        # (about 3x faster than extending from numpy arrays).
        batch = marketdata_pb2.TickBatch(
            seq=columns.seq,
            symbols=self._names,
            symbol_digits=self._digits,
            symbol_index=columns.symbol_index.tolist(),
            time_msc=columns.time_msc.tolist(),
            bid=columns.bid.tolist(),
            ask=columns.ask.tolist(),
            volume=columns.volume.tolist(),
            total=self._total,
        )
        return marketdata_pb2.SubscribeResponse(batch=batch)

    def end(self, next_seq: int) -> marketdata_pb2.SubscribeResponse:
        """The empty batch that marks the end of the stream."""
        batch = marketdata_pb2.TickBatch(seq=next_seq, total=self._total)
        return marketdata_pb2.SubscribeResponse(batch=batch)


def symbol_from_proto(info: common_pb2.SymbolInfo) -> Symbol:
    return Symbol(
        name=info.name,
        description=info.description,
        currency_base=info.currency_base,
        currency_profit=info.currency_profit,
        digits=info.digits,
        spread_points=info.spread,
        trade_contract_size=info.trade_contract_size,
        volume_min=info.volume_min,
        volume_max=info.volume_max,
        volume_step=info.volume_step,
    )


def tick_columns_from_proto(batch: marketdata_pb2.TickBatch) -> TickColumns:
    """Decode a TickBatch into numpy columns (``symbol_index`` refers to ``batch.symbols``)."""
    return TickColumns(
        seq=batch.seq,
        symbol_index=np.array(batch.symbol_index, dtype=np.uint32),
        time_msc=np.array(batch.time_msc, dtype=np.int64),
        bid=np.array(batch.bid, dtype=np.int64),
        ask=np.array(batch.ask, dtype=np.int64),
        volume=np.array(batch.volume, dtype=np.float64),
    )
