"""Fixtures shared by the test suite: real services on free ports."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from quantmesh.runtime.server import ServiceRuntime
from quantmesh.services.marketdata.config import MarketDataSettings
from quantmesh.services.marketdata.service import build_runtime
from quantmesh.services.marketdata.sources import ReplaySource


@pytest.fixture(autouse=True, scope="session")
def _quantmesh_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test writes into the checkout's var/: state defaults to a temporary home."""
    with pytest.MonkeyPatch.context() as patch:
        if "QUANTMESH_HOME" not in os.environ:
            patch.setenv("QUANTMESH_HOME", str(tmp_path_factory.mktemp("quantmesh-home")))
        yield


@pytest.fixture(scope="session")
def replay_source() -> ReplaySource:
    return ReplaySource.eurusd()


@pytest.fixture
async def marketdata(replay_source: ReplaySource) -> AsyncIterator[ServiceRuntime]:
    """The market data service on a free port, serving the shipped replay."""
    runtime = build_runtime(MarketDataSettings(port=0), source=replay_source)
    await runtime.start()
    yield runtime
    await runtime.stop(grace=0.2)


@pytest.fixture
async def channel(marketdata: ServiceRuntime) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{marketdata.port}") as open_channel:
        yield open_channel
