"""gRPC adapter of the risk service: evaluations, limits and kill switches.

``EvaluateSignal`` is a dry run: it reads the account from execution, evaluates the
signal on a scratch copy of the engine and answers the decision, and nothing changes:
no order, no drift observation, no kill switch. Only the driver
(:mod:`quantmesh.services.risk.driver`) trades. The dry run's provenance, with no order,
is offered to the graph store as decision ``dry-run:<account>:<signal id>`` (attribute
``dry_run``), never replacing the driver's record of the same signal.

The engine is synchronous and serialised by its own lock (a change is an fsynced SQLite
write), so calls into it run in a worker thread and never block the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import grpc

from quantmesh.execution.v1 import execution_pb2, execution_pb2_grpc
from quantmesh.risk.v1 import risk_pb2, risk_pb2_grpc
from quantmesh.runtime.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
    abort_on_domain_error,
)
from quantmesh.runtime.logging import get_logger
from quantmesh.services.risk import convert
from quantmesh.services.risk.convert import QuoteBook
from quantmesh.services.risk.graph import RiskGraph
from quantmesh.services.risk.provenance import dry_run_decision_id
from quantmesh.services.risk.sizing import SymbolSpec
from quantmesh.services.risk.store import DurableRiskEngine

SERVICE_NAME = risk_pb2.DESCRIPTOR.services_by_name["RiskService"].full_name
MAX_ACCOUNT_ID_LENGTH = 64
EXECUTION_TIMEOUT_SECONDS = 10.0
OPERATOR = "operator"
XFCC_HEADER = "x-forwarded-client-cert"

Context = grpc.aio.ServicerContext[Any, Any]

_log = get_logger("risk")


def caller_identity(context: Context) -> str:
    """Who is calling: the TLS peer identity, else the SPIFFE URI the mesh's Envoy
    forwards in ``x-forwarded-client-cert``, else ``operator``.

    Services listen on loopback and only the local Envoy reaches them, so the header
    is the sidecar's word about the caller, not the caller's own.
    """
    for identity in context.peer_identities() or ():
        return identity.decode("utf-8", errors="replace")
    for key, value in context.invocation_metadata() or ():
        if key.lower() != XFCC_HEADER or not isinstance(value, str):
            continue
        # Each proxy appends an element; the last names the caller of the nearest one.
        element = value.split(",")[-1]
        for part in element.split(";"):
            name, _, text = part.partition("=")
            if name.strip().lower() == "uri" and text.strip():
                return text.strip().strip('"')
    return OPERATOR


def execution_error(error: grpc.aio.AioRpcError, what: str) -> DomainError:
    """A failed call to execution as the domain error risk answers with."""
    details = error.details() or error.code().name
    code = error.code()
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(f"{what}: {details}")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(f"{what}: {details}")
    return Unavailable(f"{what}: execution answered {code.name}: {details}")


async def read_account(
    execution: execution_pb2_grpc.ExecutionServiceAsyncStub, account_id: str
) -> tuple[execution_pb2.Account, list[execution_pb2.Position]]:
    """The account and its open positions, as execution has them now."""
    account = await execution.GetAccount(
        execution_pb2.GetAccountRequest(account_id=account_id), timeout=EXECUTION_TIMEOUT_SECONDS
    )
    positions = await execution.ListPositions(
        execution_pb2.ListPositionsRequest(account_id=account_id),
        timeout=EXECUTION_TIMEOUT_SECONDS,
    )
    return account.account, list(positions.positions)


def _account_id(account_id: str, *, required: bool = True) -> str:
    if required and not account_id:
        raise InvalidArgument("account_id is required")
    if len(account_id) > MAX_ACCOUNT_ID_LENGTH:
        raise InvalidArgument(f"account_id is longer than {MAX_ACCOUNT_ID_LENGTH} characters")
    return account_id


class RiskServicer(risk_pb2_grpc.RiskServiceServicer):
    """Serves the risk engine; account state comes from execution.

    Parameters
    ----------
    risk:
        The engine and its store.
    execution:
        Stub of the execution service: the source of accounts, balances and positions.
    quotes:
        Prices for currency conversions, shared with the driver that fills it.
    symbols:
        The symbols risk can size.
    known_accounts:
        Accounts taken to exist without asking execution (the driver's account).
    graph:
        Where dry runs' provenance is offered (None: not recorded).
    """

    def __init__(
        self,
        risk: DurableRiskEngine,
        execution: execution_pb2_grpc.ExecutionServiceAsyncStub,
        quotes: QuoteBook,
        symbols: Mapping[str, SymbolSpec],
        known_accounts: set[str] | None = None,
        graph: RiskGraph | None = None,
    ) -> None:
        self._risk = risk
        self._graph = graph
        self._execution = execution
        self._quotes = quotes
        self._symbols = dict(symbols)
        self._known = set(known_accounts or ())

    async def _require_account(self, account_id: str) -> None:
        """NOT_FOUND unless execution knows ``account_id`` (answers are remembered)."""
        if account_id in self._known:
            return
        try:
            await self._execution.GetAccount(
                execution_pb2.GetAccountRequest(account_id=account_id),
                timeout=EXECUTION_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as error:
            raise execution_error(error, f"account {account_id!r}") from error
        self._known.add(account_id)

    async def EvaluateSignal(
        self, request: risk_pb2.EvaluateSignalRequest, context: Context
    ) -> risk_pb2.EvaluateSignalResponse:
        async with abort_on_domain_error(context):
            account_id = _account_id(request.account_id)
            if not request.HasField("signal"):
                raise InvalidArgument("signal is required")
            signal = request.signal
            spec = convert.symbol_spec(signal.symbol, self._symbols)
            view = convert.signal_view_from_proto(signal, spec)
            try:
                account, positions = await read_account(self._execution, account_id)
            except grpc.aio.AioRpcError as error:
                raise execution_error(error, f"account {account_id!r}") from error
            self._known.add(account_id)
            state = convert.account_state_from_proto(account, positions)
            quotes = self._quotes.quotes(positions)
            decision = await asyncio.to_thread(self._risk.dry_run, view, state, quotes, spec)
        message = convert.decision_to_proto(decision, signal.trace)
        if self._graph is not None:
            self._graph.offer(
                dry_run_decision_id(account_id, signal.signal_id), signal, message, dry_run=True
            )
        return risk_pb2.EvaluateSignalResponse(decision=message)

    async def GetLimits(
        self, request: risk_pb2.GetLimitsRequest, context: Context
    ) -> risk_pb2.GetLimitsResponse:
        async with abort_on_domain_error(context):
            account_id = _account_id(request.account_id)
            await self._require_account(account_id)
            limits, defaults = await asyncio.to_thread(self._risk.limits, account_id)
        return risk_pb2.GetLimitsResponse(limits=convert.limits_to_proto(limits), defaults=defaults)

    async def SetLimits(
        self, request: risk_pb2.SetLimitsRequest, context: Context
    ) -> risk_pb2.SetLimitsResponse:
        async with abort_on_domain_error(context):
            account_id = _account_id(request.account_id)
            if not request.HasField("limits"):
                raise InvalidArgument("limits is required: SetLimits replaces every field")
            current, _ = await asyncio.to_thread(self._risk.limits, account_id)
            limits = convert.limits_from_proto(request.limits, current)
            await self._require_account(account_id)
            applied = await asyncio.to_thread(self._risk.set_limits, account_id, limits)
            _log.info(
                "limits set", account_id=account_id, by=caller_identity(context), limits=applied
            )
        return risk_pb2.SetLimitsResponse(limits=convert.limits_to_proto(applied))

    async def GetKillSwitch(
        self, request: risk_pb2.GetKillSwitchRequest, context: Context
    ) -> risk_pb2.GetKillSwitchResponse:
        async with abort_on_domain_error(context):
            account_id = _account_id(request.account_id, required=False)
            switch = await asyncio.to_thread(self._risk.kill_switch, account_id)
        return risk_pb2.GetKillSwitchResponse(kill_switch=convert.kill_switch_to_proto(switch))

    async def SetKillSwitch(
        self, request: risk_pb2.SetKillSwitchRequest, context: Context
    ) -> risk_pb2.SetKillSwitchResponse:
        # No account check against execution: stopping trading must work even while
        # execution is down, and a switch on an account execution does not know is
        # harmless. The time is the wall clock: a person acts now, not at market time.
        async with abort_on_domain_error(context):
            account_id = _account_id(request.account_id, required=False)
            changed_by = caller_identity(context)
            switch = await asyncio.to_thread(
                lambda: self._risk.set_kill_switch(
                    account_id,
                    engaged=request.engaged,
                    reason=request.reason,
                    changed_by=changed_by,
                    time_ms=time.time_ns() // 1_000_000,
                )
            )
            _log.warning(
                "kill switch engaged" if request.engaged else "kill switch released",
                account_id=account_id or "(global)",
                by=changed_by,
                reason=request.reason.strip(),
            )
        return risk_pb2.SetKillSwitchResponse(kill_switch=convert.kill_switch_to_proto(switch))
