"""Durable risk state on SQLite, and the risk engine that writes through to it.

One file (``$QUANTMESH_HOME/risk/risk.sqlite3`` by default), WAL mode,
``synchronous = FULL``: a committed change survives a crash. Tables:

- ``limits``: the limits of every account that had them set, each field as exact text.
- ``kill_switches``: the state of each switch (``account_id = ''`` is the global one).
  An engaged switch is a safety decision by a person or by the daily loss rule; a
  restart must not quietly release it, so it lives here, not only in memory.
- ``kill_switch_log``: every change of a switch, append-only, for whoever asks later
  who stopped trading and why.
- ``cursors``: the seq of the last signal the driver has fully handled, per
  subscription (account, symbols): it resumes after it.

:class:`DurableRiskEngine` keeps the pure :class:`~quantmesh.services.risk.core.RiskEngine`
and this store in step: state is loaded at start-up and every change is written
through. Nothing here imports grpc.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path

from quantmesh.runtime.config import quantmesh_home
from quantmesh.runtime.sqlite import connect, immediate
from quantmesh.services.risk.core import AccountState, RiskDecision, RiskEngine, SignalView
from quantmesh.services.risk.rules import DriftMonitor, KillSwitch, RiskLimits
from quantmesh.services.risk.sizing import Quotes, SymbolSpec, to_decimal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS limits (
  account_id TEXT PRIMARY KEY,
  fields     TEXT NOT NULL  -- JSON {field: exact decimal or integer text}
);
CREATE TABLE IF NOT EXISTS kill_switches (
  account_id      TEXT    PRIMARY KEY,  -- '' is the global switch
  engaged         INTEGER NOT NULL,
  reason          TEXT    NOT NULL,
  changed_by      TEXT    NOT NULL,
  changed_time_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS kill_switch_log (
  seq             INTEGER PRIMARY KEY,
  account_id      TEXT    NOT NULL,
  engaged         INTEGER NOT NULL,
  reason          TEXT    NOT NULL,
  changed_by      TEXT    NOT NULL,
  changed_time_ms INTEGER NOT NULL
);
CREATE TRIGGER IF NOT EXISTS kill_switch_log_is_kept BEFORE DELETE ON kill_switch_log
BEGIN SELECT RAISE(ABORT, 'the kill switch log is append-only'); END;
CREATE TABLE IF NOT EXISTS cursors (
  name TEXT    PRIMARY KEY,
  seq  INTEGER NOT NULL
)
"""

_LIMIT_FIELDS = {spec.name: spec.type for spec in dataclasses.fields(RiskLimits)}


def default_store_path() -> Path:
    """``$QUANTMESH_HOME/risk/risk.sqlite3``."""
    return quantmesh_home() / "risk" / "risk.sqlite3"


def cursor_name(account_id: str, symbols: list[str] | tuple[str, ...]) -> str:
    """The cursor of one subscription: decision numbers signals per symbol set."""
    return f"{account_id}|{','.join(sorted(symbols))}|hold"


def _limits_to_json(limits: RiskLimits) -> str:
    return json.dumps({name: str(getattr(limits, name)) for name in _LIMIT_FIELDS}, sort_keys=True)


def _limits_from_json(text: str, defaults: RiskLimits) -> RiskLimits:
    # A field added to RiskLimits after the row was written takes the default.
    stored: dict[str, str] = json.loads(text)
    values: dict[str, int | Decimal] = {}
    for name, kind in _LIMIT_FIELDS.items():
        raw = stored.get(name)
        if raw is None:
            values[name] = getattr(defaults, name)
        else:
            values[name] = int(raw) if kind == "int" else to_decimal(Decimal(raw))
    return RiskLimits(**values)  # type: ignore[arg-type]  # keys are RiskLimits' own fields


class RiskStore:
    """Limits, kill switches and cursors in one SQLite file; safe to share between threads.

    Parameters
    ----------
    path:
        The database file; :func:`default_store_path` if None. Its folder is created.
    """

    def __init__(self, path: Path | str | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self._lock = threading.Lock()
        self._db = connect(self.path)  # fsynced commits: an engaged switch is on disk first
        with self._transaction() as db:
            for statement in _SCHEMA.split(";\n"):
                db.execute(statement)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock, immediate(self._db) as db:
            yield db

    def _read(self, sql: str, *args: object) -> list[tuple[object, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args))

    # --- limits ------------------------------------------------------------------

    def limits(self, defaults: RiskLimits | None = None) -> dict[str, RiskLimits]:
        """Every account's stored limits; fields unknown to the row take ``defaults``'."""
        base = defaults or RiskLimits()
        rows = self._read("SELECT account_id, fields FROM limits ORDER BY account_id")
        return {str(account): _limits_from_json(str(text), base) for account, text in rows}

    def save_limits(self, account_id: str, limits: RiskLimits) -> None:
        """Replace the stored limits of ``account_id``."""
        with self._transaction() as db:
            db.execute(
                "INSERT INTO limits (account_id, fields) VALUES (?, ?) "
                "ON CONFLICT (account_id) DO UPDATE SET fields = excluded.fields",
                (account_id, _limits_to_json(limits)),
            )

    # --- kill switches --------------------------------------------------------------

    def kill_switches(self) -> dict[str, KillSwitch]:
        """Every switch ever changed, by account id (``''``: the global one)."""
        rows = self._read(
            "SELECT account_id, engaged, reason, changed_by, changed_time_ms FROM kill_switches"
        )
        return {
            str(account): KillSwitch(str(account), bool(engaged), str(reason), str(by), int(str(t)))
            for account, engaged, reason, by, t in rows
        }

    def save_kill_switch(self, switch: KillSwitch) -> None:
        """Record the new state of a switch and log the change, in one transaction."""
        row = (
            switch.account_id,
            int(switch.engaged),
            switch.reason,
            switch.changed_by,
            switch.changed_time_ms,
        )
        with self._transaction() as db:
            db.execute(
                "INSERT INTO kill_switches "
                "(account_id, engaged, reason, changed_by, changed_time_ms) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (account_id) DO UPDATE SET engaged = excluded.engaged, "
                "reason = excluded.reason, changed_by = excluded.changed_by, "
                "changed_time_ms = excluded.changed_time_ms",
                row,
            )
            db.execute(
                "INSERT INTO kill_switch_log "
                "(account_id, engaged, reason, changed_by, changed_time_ms) VALUES (?, ?, ?, ?, ?)",
                row,
            )

    def kill_switch_log(self, account_id: str | None = None) -> list[KillSwitch]:
        """Every change of the switches (of ``account_id`` only, if given), oldest first."""
        sql = "SELECT account_id, engaged, reason, changed_by, changed_time_ms FROM kill_switch_log"
        rows = (
            self._read(sql + " ORDER BY seq")
            if account_id is None
            else self._read(sql + " WHERE account_id = ? ORDER BY seq", account_id)
        )
        return [
            KillSwitch(str(account), bool(engaged), str(reason), str(by), int(str(t)))
            for account, engaged, reason, by, t in rows
        ]

    # --- cursors ----------------------------------------------------------------------

    def cursor(self, name: str) -> int | None:
        """The seq of the last signal fully handled on cursor ``name``; None before the first."""
        rows = self._read("SELECT seq FROM cursors WHERE name = ?", name)
        return int(str(rows[0][0])) if rows else None

    def save_cursor(self, name: str, seq: int) -> None:
        """Move cursor ``name`` to ``seq``; never backwards (a late writer cannot rewind it)."""
        if seq < 0:
            raise ValueError(f"a cursor is a seq, never negative: {seq}")
        with self._transaction() as db:
            db.execute(
                "INSERT INTO cursors (name, seq) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET seq = max(seq, excluded.seq)",
                (name, seq),
            )


class DurableRiskEngine:
    """A :class:`RiskEngine` whose limits and kill switches live in a :class:`RiskStore`.

    The core stays pure; this wrapper loads its state at construction and writes every
    change through. Changes fail safe: engaging a switch takes effect in memory before
    it is written (trading stops even if the disk fails), releasing one and setting
    limits are written before they take effect (a failed write leaves the old state).
    A lock serialises every call, so the adapter may call from worker threads.

    Parameters
    ----------
    store:
        Where the state lives.
    default_limits:
        Limits of accounts that never had limits set.
    drift:
        The model drift monitor (in memory: it refills from the signal stream).
    """

    def __init__(
        self,
        store: RiskStore,
        default_limits: RiskLimits | None = None,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.store = store
        defaults = default_limits or RiskLimits()
        self._limits = store.limits(defaults)
        self._switches = store.kill_switches()
        self.engine = RiskEngine(self._limits, defaults, drift)
        for switch in self._switches.values():
            self._apply(self.engine, switch)
        self._lock = threading.RLock()

    @staticmethod
    def _apply(engine: RiskEngine, switch: KillSwitch) -> None:
        # A stored switch passed RiskEngine's checks when it was set, so it passes again.
        engine.set_kill_switch(
            switch.account_id,
            engaged=switch.engaged,
            reason=switch.reason,
            changed_by=switch.changed_by,
            time_ms=switch.changed_time_ms,
        )

    # --- limits ----------------------------------------------------------------------

    def limits(self, account_id: str) -> tuple[RiskLimits, bool]:
        """The limits in force for ``account_id`` and whether they are the defaults."""
        with self._lock:
            return self.engine.limits(account_id), self.engine.uses_default_limits(account_id)

    def set_limits(self, account_id: str, limits: RiskLimits) -> RiskLimits:
        """Replace the limits of ``account_id``: written, then in force."""
        with self._lock:
            self.store.save_limits(account_id, limits)
            self._limits[account_id] = limits
            return self.engine.set_limits(account_id, limits)

    # --- kill switches ------------------------------------------------------------------

    def kill_switch(self, account_id: str = "") -> KillSwitch:
        """The switch of ``account_id`` as the core reads it (the global one included)."""
        with self._lock:
            return self.engine.kill_switch(account_id)

    def set_kill_switch(
        self, account_id: str, *, engaged: bool, reason: str, changed_by: str, time_ms: int
    ) -> KillSwitch:
        """Engage or release a switch and write it through (see the class docstring).

        Raises
        ------
        InvalidArgument
            Engaging without a reason, or a reason over 500 characters (from the core).
        """
        with self._lock:
            if engaged:
                switch = self.engine.set_kill_switch(
                    account_id, engaged=True, reason=reason, changed_by=changed_by, time_ms=time_ms
                )
                self._switches[account_id] = switch
                self.store.save_kill_switch(switch)
            else:
                # Validate and build on a scratch engine, write, then release for real.
                switch = RiskEngine().set_kill_switch(
                    account_id, engaged=False, reason=reason, changed_by=changed_by, time_ms=time_ms
                )
                self.store.save_kill_switch(switch)
                self._apply(self.engine, switch)
                self._switches[account_id] = switch
            return self.engine.kill_switch(account_id)

    # --- evaluation ---------------------------------------------------------------------

    def evaluate(
        self, signal: SignalView, account: AccountState, quotes: Quotes, symbol: SymbolSpec
    ) -> RiskDecision:
        """Evaluate for trading: the drift monitor learns the signal, and a daily loss
        limit reached engages the account's switch, durably."""
        with self._lock:
            seen = self.engine.kill_switch(account.account_id)
            decision = self.engine.evaluate(signal, account, quotes, symbol)
            now = self.engine.kill_switch(account.account_id)
            if now != seen:
                # Evaluation changes one thing only, the account's own switch, and only to
                # engage it (daily loss limit reached): it must stay engaged on restart.
                self.store.save_kill_switch(now)
                self._switches[account.account_id] = now
            return decision

    def dry_run(
        self, signal: SignalView, account: AccountState, quotes: Quotes, symbol: SymbolSpec
    ) -> RiskDecision:
        """Evaluate without changing anything: on a scratch engine with copies of the
        limits, the switches and the drift monitor. A query must not teach the drift
        monitor a hypothetical prediction, nor engage a switch."""
        with self._lock:
            scratch = RiskEngine(
                dict(self._limits), self.engine.default_limits, copy.deepcopy(self.engine.drift)
            )
            for switch in self._switches.values():
                self._apply(scratch, switch)
            return scratch.evaluate(signal, account, quotes, symbol)

    def observe(self, signal: SignalView) -> None:
        """Let the drift monitor see a signal that is not evaluated (a HOLD).

        The monitor should see every prediction, not only the confident tail that
        becomes BUY or SELL; the core observes the signals it evaluates itself.
        """
        p_up = signal.probability_up
        if p_up is None or not math.isfinite(p_up) or not signal.model_name:
            return
        with self._lock:
            self.engine.drift.observe(
                signal.model_name, signal.model_version, signal.signal_id, to_decimal(p_up)
            )

    @property
    def switches(self) -> Mapping[str, KillSwitch]:
        """The own state of every switch ever changed (not merged with the global one)."""
        with self._lock:
            return dict(self._switches)
