"""Assemble the execution service: durable store, paper broker, engine, tick feed."""

from __future__ import annotations

import asyncio

import grpc

from quantmesh.execution.v1 import execution_pb2_grpc
from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.execution.broker import PaperBroker
from quantmesh.services.execution.clock import MarketClock
from quantmesh.services.execution.config import ExecutionSettings
from quantmesh.services.execution.core import ExecutionEngine
from quantmesh.services.execution.servicer import (
    SERVICE_NAME,
    ExecutionServicer,
    ReportSignal,
    tick_feed,
)
from quantmesh.services.execution.store import ExecutionStore
from quantmesh.services.marketdata.sources import EURGBP, EURUSD, GBPUSD, USDJPY

# The symbols the paper broker trades: every symbol quantmesh's sources define.
PAPER_SYMBOLS = {symbol.name: symbol for symbol in (EURUSD, GBPUSD, USDJPY, EURGBP)}


def build_runtime(settings: ExecutionSettings) -> ServiceRuntime:
    """A runtime serving the paper account; recovers its state before it serves."""
    settings.folder.mkdir(parents=True, exist_ok=True)
    signal = ReportSignal()
    engine = ExecutionEngine(
        ExecutionStore(settings.folder / "execution.sqlite3", database=settings.database_url),
        PaperBroker(settings.folder / "paper_broker.sqlite3", PAPER_SYMBOLS),
        symbols=PAPER_SYMBOLS,
        account_id=settings.account_id,
        currency=settings.currency,
        starting_balance=settings.starting_balance,
        on_reports=signal,
    )
    # Reconcile with the broker before trading again: nothing sent twice, nothing lost.
    engine.recover()
    clock = MarketClock(settings.clock)

    def register(server: grpc.aio.Server, shutdown: asyncio.Event) -> None:
        execution_pb2_grpc.add_ExecutionServiceServicer_to_server(
            ExecutionServicer(engine, PAPER_SYMBOLS, signal.changed, shutdown, clock), server
        )

    async def feed(shutdown: asyncio.Event) -> None:
        signal.attach(asyncio.get_running_loop())
        await tick_feed(
            engine,
            clock,
            settings.marketdata_address,
            list(PAPER_SYMBOLS),
            settings.tick_batch_size,
            settings.tick_speed,
            shutdown,
        )

    return ServiceRuntime("execution", settings, [SERVICE_NAME], register, background=[feed])
