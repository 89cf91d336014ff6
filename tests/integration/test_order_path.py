"""The whole platform as ``quantmesh up`` runs it: seven processes, real gRPC, shipped data.

marketdata → features → inference → decision → risk → execution, with analytics
beside them, each its own process on free ports, with a model trained on the shipped
data. The replay runs to its end; then the orders, fills and accounts are read back and
checked against each other and against a second, independent accounting (analytics'
ledger). A second run kills execution mid-replay and must end with exactly the same
orders and fills: nothing lost, nothing doubled, nothing filled at another price.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import grpc
import pytest

from quantmesh.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from quantmesh.cli.dashboard import Dashboard, total
from quantmesh.common.v1 import common_pb2
from quantmesh.decision.v1 import decision_pb2
from quantmesh.execution.v1 import execution_pb2 as ex
from quantmesh.execution.v1 import execution_pb2_grpc
from quantmesh.mesh.launcher import PIPELINE, ServiceProcess, local_pipeline
from quantmesh.observability.audit.chain import RecordKind
from quantmesh.observability.audit.store import AuditStore
from quantmesh.observability.receiver import ReceivedSpan, SpanReceiver
from quantmesh.services.decision.client import SignalSubscriber
from quantmesh.services.execution.client import ExecutionReportSubscriber
from quantmesh.services.execution.convert import money_from_proto as money
from quantmesh.services.inference.testing import (
    MODEL_NAME,
    register_tiny_model,
    train_direction_model,
)
from quantmesh.services.registry.core import ModelRegistry
from quantmesh.services.risk.rules import RiskLimits
from quantmesh.services.risk.store import RiskStore

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ENV = {"QUANTMESH_EXECUTION_CLOCK": "pipeline", "QUANTMESH_RISK_DEVIATION_POINTS": "50"}
QUIET = {f"QUANTMESH_{name.upper()}_LOG_LEVEL": "WARNING" for name in PIPELINE}
START = Decimal(10_000)
RULES = 12  # every risk decision carries one verdict per rule


@dataclass
class Outcome:
    """Everything a finished run left behind."""

    orders: list[ex.Order]
    reports: list[ex.ExecutionReport]
    account: ex.Account
    positions: list[ex.Position]
    performance: analytics_pb2.Performance
    final_equity_in_analytics: Decimal
    signals: list[decision_pb2.Signal]
    approved: float
    rejected: float
    broker_keys: list[tuple[str, int]]
    home: Path
    spans: list[ReceivedSpan]

    def fills(self) -> list[tuple[str, int, int, int, int]]:
        """(key, price, lots, nanolots, time) of every fill, in report order."""
        return [
            (
                r.idempotency_key,
                r.fill_price.points,
                r.fill_volume.units,
                r.fill_volume.nanos,
                r.time_ms,
            )
            for r in self.reports
            if r.fill_volume.units or r.fill_volume.nanos
        ]


def wait_until_done(
    running: dict[str, ServiceProcess], during: Callable[[Dashboard], None] | None = None
) -> Dashboard:
    """Supervise as ``quantmesh up`` does until risk and execution finished the replay."""
    dashboard = Dashboard(running)
    deadline = time.monotonic() + 300
    while not dashboard.replay_done:
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{p.logs()[-3000:]}" for n, p in running.items())
            raise AssertionError(f"the replay did not finish in time\n{logs}")
        time.sleep(0.2)
        dashboard.refresh()
        if during is not None:
            during(dashboard)
        for process in running.values():
            if process.exited:
                process.restart()
    return dashboard


async def read_outcome(running: dict[str, ServiceProcess], dashboard: Dashboard) -> Outcome:
    async with (
        grpc.aio.insecure_channel(running["execution"].address) as execution_channel,
        grpc.aio.insecure_channel(running["analytics"].address) as analytics_channel,
        grpc.aio.insecure_channel(running["decision"].address) as decision_channel,
    ):
        execution = execution_pb2_grpc.ExecutionServiceStub(execution_channel)
        analytics = analytics_pb2_grpc.AnalyticsServiceStub(analytics_channel)
        orders: list[ex.Order] = []
        token = ""
        while True:
            page = await execution.ListOrders(
                ex.ListOrdersRequest(page_size=1000, page_token=token)
            )
            orders += page.orders
            token = page.next_page_token
            if not token:
                break
        account = (await execution.GetAccount(ex.GetAccountRequest())).account
        positions = list((await execution.ListPositions(ex.ListPositionsRequest())).positions)
        reports: list[ex.ExecutionReport] = []

        async def collect() -> None:
            subscriber = ExecutionReportSubscriber(execution_channel, batch_size=1000)
            async for batch in subscriber.batches():
                reports.extend(batch.reports)

        # The replay is over: once the live stream has gone quiet, every report is in.
        reader = asyncio.create_task(collect())
        seen = -1
        while len(reports) != seen:
            seen = len(reports)
            await asyncio.sleep(1.0)
        reader.cancel()
        assert [r.seq for r in reports] == list(range(len(reports)))
        # Analytics follows the report stream: wait until its ledger has every fill.
        for _ in range(120):
            performance = (
                await analytics.GetPerformance(
                    analytics_pb2.GetPerformanceRequest(account_id="paper")
                )
            ).performance
            if money(performance.realized_pnl) == money(account.balance) - START:
                break
            await asyncio.sleep(0.25)
        curve = (
            await analytics.GetEquityCurve(analytics_pb2.GetEquityCurveRequest(account_id="paper"))
        ).curve
        signals: list[decision_pb2.Signal] = []
        async for signal_batch in SignalSubscriber(decision_channel, ["EURUSD"]).batches():
            signals += signal_batch.signals
    home = Path(running["execution"].env["QUANTMESH_HOME"])
    with sqlite3.connect(home / "execution" / "paper_broker.sqlite3") as journal:
        broker_keys = journal.execute(
            "SELECT client_key, COUNT(*) FROM broker_orders GROUP BY client_key"
        ).fetchall()
    return Outcome(
        home=home,
        orders=orders,
        reports=reports,
        account=account,
        positions=positions,
        performance=performance,
        final_equity_in_analytics=Decimal(curve.equity_micros[-1]) / 1_000_000,
        signals=signals,
        approved=total(dashboard.samples, "quantmesh_risk_decisions_total", outcome="approved"),
        rejected=total(dashboard.samples, "quantmesh_risk_decisions_total", outcome="rejected"),
        broker_keys=broker_keys,
        spans=[],
    )


def run_platform(
    home: Path, during: Callable[[Dashboard], None] | None = None, traced: bool = False
) -> Outcome:
    """Run the replay to its end; with ``traced``, every service exports its spans."""
    with SpanReceiver() as receiver:
        env = ENV | QUIET | (receiver.environment() if traced else {})
        with local_pipeline(home, services=tuple(PIPELINE), env=env, metrics=True) as running:
            dashboard = wait_until_done(running, during)
            outcome = asyncio.run(read_outcome(running, dashboard))
        # The services have stopped, and exported what they buffered on the way out.
        outcome.spans = receiver.spans()
        return outcome


@pytest.fixture(scope="module")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    model = train_direction_model()

    def home(name: str) -> Path:
        root = tmp_path_factory.mktemp(name)
        register_tiny_model(ModelRegistry(root / "registry"), MODEL_NAME, model, ["champion"])
        # An operator allowed one open position (SetLimits, kept in risk's store), so
        # signals arriving while one is open are rejected by max_open_positions.
        (root / "risk").mkdir()
        store = RiskStore(root / "risk" / "risk.sqlite3")
        store.save_limits("paper", RiskLimits(max_open_positions=1))
        store.close()
        return root

    return home


@pytest.fixture(scope="module")
def clean_run(model_home: Callable[[str], Path]) -> Outcome:
    # Traced: the crash run, untraced, must still trade exactly as this one did.
    return run_platform(model_home("clean"), traced=True)


def test_signals_become_risk_approved_orders_and_fills(clean_run: Outcome) -> None:
    run = clean_run
    assert run.fills(), "the replay filled no order"
    opened = {s.signal_id: s for s in run.signals if s.action != decision_pb2.ACTION_CLOSE}
    client_orders = [o for o in run.orders if o.risk_decision.signal_id]
    assert client_orders
    for order in client_orders:
        decision = order.risk_decision
        assert decision.approved
        assert len(decision.verdicts) == RULES
        assert all(v.passed for v in decision.verdicts), decision
        assert order.model_name == MODEL_NAME
        signal_id = order.idempotency_key.split(":")[0]
        assert signal_id == order.signal_id == decision.signal_id
        if not order.position_id:
            assert signal_id in opened
            side = {decision_pb2.ACTION_BUY: common_pb2.SIDE_BUY}.get(
                opened[signal_id].action, common_pb2.SIDE_SELL
            )
            assert order.side == side
    # Every actionable signal got a verdict; the rejected ones never became orders.
    actionable = [s for s in run.signals if s.action != decision_pb2.ACTION_HOLD]
    assert run.approved + run.rejected == len(actionable)
    assert run.rejected > 0, "max_open_positions=1 rejects signals while a position is open"
    assert len({o.signal_id for o in client_orders}) <= run.approved
    assert max(len(run.positions), 0) <= 1
    # Stops and targets closed positions at the broker: those orders carry no decision.
    assert any(not o.risk_decision.signal_id for o in run.orders)


def test_every_key_reached_the_broker_exactly_once(clean_run: Outcome) -> None:
    keys = [o.idempotency_key for o in clean_run.orders]
    assert len(keys) == len(set(keys))
    assert all(count == 1 for _, count in clean_run.broker_keys)
    assert {key for key, _ in clean_run.broker_keys} == set(keys)


def test_accounting_reconciles_with_an_independent_ledger(clean_run: Outcome) -> None:
    run = clean_run
    account = run.account
    unrealized = sum((money(p.unrealized_pnl) for p in run.positions), Decimal(0))
    commission = sum((money(r.commission) for r in run.reports), Decimal(0))
    # equity = start + realized + unrealized − costs, to the cent, in execution …
    assert money(account.equity) == money(account.balance) + unrealized
    # … and in analytics' own ledger, built only from the fills and prices it recorded.
    assert money(run.performance.realized_pnl) == money(account.balance) - START
    assert money(run.performance.commission) == commission
    assert money(run.performance.unrealized_pnl) == unrealized
    assert run.final_equity_in_analytics == money(account.equity)


def test_a_crash_of_execution_mid_replay_loses_and_doubles_nothing(
    clean_run: Outcome, model_home: Callable[[str], Path]
) -> None:
    crashed: list[int] = []

    def crash_once(dashboard: Dashboard) -> None:
        fills = total(dashboard.samples, "quantmesh_fills_total")
        if not crashed and fills >= 6:
            execution = dashboard.services["execution"]
            crashed.append(execution.stop(kill=True))
            execution.restart()

    run = run_platform(model_home("crash"), during=crash_once)
    assert crashed == [-9], "the replay ended before execution could be killed"
    keys = [o.idempotency_key for o in run.orders]
    assert len(keys) == len(set(keys))
    assert all(count == 1 for _, count in run.broker_keys)
    # A deterministic replay: the same orders, filled at the same prices and times.
    assert sorted(keys) == sorted(o.idempotency_key for o in clean_run.orders)
    assert run.fills() == clean_run.fills()
    assert money(run.account.equity) == money(clean_run.account.equity)


def test_every_risk_decision_and_order_is_in_a_verified_audit_log(clean_run: Outcome) -> None:
    with AuditStore(clean_run.home / "audit" / "audit.sqlite3", create=False) as store:
        report = store.verify()
        assert report.ok, report.check
        decisions = [
            json.loads(record.payload_json)["RiskDecision"]
            for record in store.records()
            if record.kind == RecordKind.RISK_DECISION
        ]
        assert len(decisions) == clean_run.approved + clean_run.rejected
        assert sum(1 for d in decisions if not d.get("approved")) == clean_run.rejected
        for order in (o for o in clean_run.orders if o.risk_decision.signal_id):
            story = store.decision(decision_id=order.signal_id)
            kinds = [record.kind for record in story]
            assert kinds[:2] == [RecordKind.SIGNAL, RecordKind.RISK_DECISION], kinds
            assert RecordKind.ORDER in kinds
            assert {r.producer for r in story if r.kind != RecordKind.EXECUTION_REPORT} == {
                "spiffe://quantmesh.local/risk"
            }
            verdicts = json.loads(story[1].payload_json)["RiskDecision"]["verdicts"]
            assert len(verdicts) == RULES
            placed = [json.loads(r.payload_json) for r in story if r.kind == RecordKind.ORDER]
            assert order.idempotency_key in {p["Order"]["idempotency_key"] for p in placed}
            if order.state == ex.ORDER_STATE_FILLED:  # the story ends with the fill
                reports = [
                    json.loads(r.payload_json)["ExecutionReport"]
                    for r in story
                    if r.kind == RecordKind.EXECUTION_REPORT
                ]
                assert any(r.get("fill_volume") for r in reports), kinds
                assert any(r.producer == "spiffe://quantmesh.local/analytics" for r in story)


DECISION_STAGES = ["features.row", "inference.predict", "decision.policy", "risk.evaluate"]


def test_each_traded_decision_is_one_trace_across_every_service(clean_run: Outcome) -> None:
    spans = clean_run.spans
    by_trace: dict[str, list[ReceivedSpan]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    evaluated = [s for s in spans if s.name == "risk.evaluate"]
    assert len(evaluated) == clean_run.approved + clean_run.rejected
    # One trace per decision: risk's span of each decision id lives in its own trace.
    decision_ids = [s.attributes["quantmesh.decision.id"] for s in evaluated]
    assert len(set(decision_ids)) == len(decision_ids)
    assert len({s.trace_id for s in evaluated}) == len(evaluated)
    orders = {o.signal_id: o for o in clean_run.orders if o.risk_decision.signal_id}
    with AuditStore(clean_run.home / "audit" / "audit.sqlite3", create=False) as audit:
        for risk_span in evaluated:
            decision_id = risk_span.attributes["quantmesh.decision.id"]
            trace = by_trace[risk_span.trace_id]
            by_id = {s.span_id: s for s in trace}
            names = [s.name for s in trace]
            for stage in DECISION_STAGES:
                assert names.count(stage) == 1, (stage, names)
            features, inference, policy, risk = (
                next(s for s in trace if s.name == stage) for stage in DECISION_STAGES
            )
            # features → inference → policy → risk, each the parent of the next.
            assert features.parent_span_id == ""
            assert inference.parent_span_id == features.span_id
            assert policy.parent_span_id == inference.span_id
            assert risk.parent_span_id == policy.span_id
            assert [s.service for s in (features, inference, policy, risk)] == [
                "features",
                "inference",
                "decision",
                "risk",
            ]
            # The attributes a person needs to explain the decision.
            assert features.links, "the features span links to its tick batches"
            assert features.attributes["quantmesh.features.tick_seq_last"] >= 0
            assert inference.attributes["quantmesh.model.name"] == MODEL_NAME
            assert inference.attributes["quantmesh.model.alias"] == "champion"
            assert len(inference.attributes["quantmesh.inference.input_digest"]) == 16
            assert 0 <= inference.attributes["quantmesh.inference.probability_up"] <= 1
            assert "quantmesh.inference.cache_hit" in inference.attributes
            assert policy.attributes["quantmesh.decision.id"] == decision_id
            assert policy.attributes["quantmesh.decision.reason"]
            assert "quantmesh.risk.exposure_error" not in risk.attributes
            verdicts = [e for e in risk.events if e[0] == "risk.rule"]
            assert len(verdicts) == RULES
            assert sum(k.startswith("quantmesh.risk.rule.") for k in risk.attributes) == RULES
            if decision_id in orders:
                # risk → SubmitOrder (client) → SubmitOrder (server) → execution.order
                order_spans = [s for s in trace if s.name == "execution.order"]
                assert order_spans
                assert all(s.service == "execution" for s in order_spans)
                for order_span in order_spans:
                    server = by_id[order_span.parent_span_id]
                    assert server.name.endswith("ExecutionService/SubmitOrder")
                    assert server.service == "execution"
                    assert server.attributes["rpc.system"] == "grpc"
                    client = by_id[server.parent_span_id]
                    assert client.service == "risk"
                    assert client.parent_span_id == risk.span_id
                    assert order_span.attributes["quantmesh.execution.broker"]
                if orders[decision_id].state == ex.ORDER_STATE_FILLED:
                    fills = [s for s in trace if s.name == "execution.fill"]
                    assert fills
                    assert {by_id[f.parent_span_id].name for f in fills} == {"execution.order"}
            # The audit log's records of the decision name the same trace.
            story = audit.decision(decision_id=decision_id)
            assert story
            assert {record.trace_id for record in story} == {risk_span.trace_id}
