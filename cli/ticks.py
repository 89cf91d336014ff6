"""``quantmesh ticks``: a small client that prints ticks from the market data service."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Annotated

import grpc
import typer
from rich.console import Console
from rich.table import Table

from quantmesh.services.marketdata.client import TickSubscriber

_out = Console()
_err = Console(stderr=True)


def ticks(
    symbols: Annotated[list[str], typer.Argument(help="Symbols, e.g. EURUSD; none for all.")],
    limit: Annotated[int, typer.Option(min=1, help="Ticks to print.")] = 10,
    address: Annotated[str, typer.Option(help="Market data service host:port.")] = (
        "127.0.0.1:8001"
    ),
    from_seq: Annotated[int, typer.Option(min=0, help="First seq to read.")] = 0,
    speed: Annotated[float, typer.Option(min=0.0, help="Replay speed; 0 = fast.")] = 0.0,
) -> None:
    """Print ticks as a table: seq, UTC time, symbol, bid, ask and spread."""
    unreachable = (
        f"[red]cannot reach the market data service at {address}: is it running? "
        "Start it with `quantmesh serve marketdata`.[/red]"
    )
    try:
        asyncio.run(_print_ticks(symbols, limit, address, from_seq, speed))
    except TimeoutError:
        _err.print(unreachable)
        raise typer.Exit(1) from None
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAVAILABLE:
            _err.print(unreachable)
        else:
            _err.print(f"[red]{error.code().name}: {error.details()}[/red]")
        raise typer.Exit(1) from None


async def _print_ticks(
    symbols: list[str], limit: int, address: str, from_seq: int, speed: float
) -> None:
    table = Table("seq", "time (UTC)", "symbol", "bid", "ask", "spread (pts)")
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=5)
        subscriber = TickSubscriber(
            channel,
            symbols,
            from_seq=from_seq,
            batch_size=min(limit, 1_000),
            window=2,
            speed=speed,
            max_resumes=0,
        )
        printed = 0
        async for batch in subscriber.batches():
            scale = [10.0**-digits for digits in batch.symbol_digits]
            for row in range(len(batch.time_msc)):
                index = batch.symbol_index[row]
                stamp = datetime.fromtimestamp(batch.time_msc[row] / 1000, tz=UTC)
                digits = batch.symbol_digits[index]
                table.add_row(
                    str(batch.seq + row),
                    stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    batch.symbols[index],
                    f"{batch.bid[row] * scale[index]:.{digits}f}",
                    f"{batch.ask[row] * scale[index]:.{digits}f}",
                    str(batch.ask[row] - batch.bid[row]),
                )
                printed += 1
                if printed >= limit:
                    _out.print(table)
                    return
    _out.print(table)
