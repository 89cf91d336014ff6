-- Execution's state as first released (IF NOT EXISTS: a store created before the
-- relational port, with these tables and no migration ledger, is adopted as version 1).
CREATE TABLE IF NOT EXISTS order_transitions (
  from_state INTEGER NOT NULL,
  to_state   INTEGER NOT NULL,
  PRIMARY KEY (from_state, to_state)
);
CREATE TABLE IF NOT EXISTS orders (
  seq              INTEGER PRIMARY KEY,  -- insertion order: newest first is seq DESC
  order_id         TEXT    NOT NULL UNIQUE,
  account_id       TEXT    NOT NULL,
  idempotency_key  TEXT    NOT NULL,
  symbol           TEXT    NOT NULL,
  side             INTEGER NOT NULL,
  type             INTEGER NOT NULL,
  volume           TEXT    NOT NULL,
  price            INTEGER,
  stop_loss        INTEGER,
  take_profit      INTEGER,
  time_in_force    INTEGER NOT NULL,
  expire_time_ms   INTEGER NOT NULL,
  deviation_points INTEGER NOT NULL,
  position_id      TEXT    NOT NULL,
  signal_id        TEXT    NOT NULL,
  traceparent      TEXT    NOT NULL,
  tracestate       TEXT    NOT NULL,
  origin           TEXT    NOT NULL,
  state            INTEGER NOT NULL,
  created_time_ms  INTEGER NOT NULL,
  updated_time_ms  INTEGER NOT NULL,
  filled_volume    TEXT    NOT NULL,
  fill_notional    TEXT    NOT NULL,
  commission       TEXT    NOT NULL,
  reject_reason    TEXT    NOT NULL,
  broker_order_id  TEXT    NOT NULL,
  model_name       TEXT    NOT NULL DEFAULT '',
  model_version    TEXT    NOT NULL DEFAULT '',
  risk_decision    BLOB    NOT NULL DEFAULT x'',  -- serialized quantmesh.risk.v1.RiskDecision
  reference_price  INTEGER,  -- the quote when recorded (market orders)
  UNIQUE (account_id, idempotency_key)
);
CREATE TRIGGER IF NOT EXISTS orders_start_new BEFORE INSERT ON orders
WHEN NEW.state <> 1
BEGIN SELECT RAISE(ABORT, 'an order is recorded in state NEW first'); END;
CREATE TRIGGER IF NOT EXISTS orders_follow_the_table BEFORE UPDATE ON orders
WHEN NOT EXISTS (
  SELECT 1 FROM order_transitions WHERE from_state = OLD.state AND to_state = NEW.state)
BEGIN SELECT RAISE(ABORT, 'illegal order state transition'); END;
CREATE TRIGGER IF NOT EXISTS orders_are_kept BEFORE DELETE ON orders
BEGIN SELECT RAISE(ABORT, 'orders are never deleted'); END;
CREATE TABLE IF NOT EXISTS fills (
  deal_id      TEXT    PRIMARY KEY,
  account_id   TEXT    NOT NULL,
  order_id     TEXT    NOT NULL REFERENCES orders (order_id),
  position_id  TEXT    NOT NULL,
  symbol       TEXT    NOT NULL,
  side         INTEGER NOT NULL,
  volume       TEXT    NOT NULL,
  price        INTEGER NOT NULL,
  commission   TEXT    NOT NULL,
  realized_pnl TEXT    NOT NULL,
  time_ms      INTEGER NOT NULL,
  closing      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
  position_id    TEXT    PRIMARY KEY,
  account_id     TEXT    NOT NULL,
  symbol         TEXT    NOT NULL,
  side           INTEGER NOT NULL,
  legs           TEXT    NOT NULL,  -- JSON [[volume, price], ...] of the open legs
  stop_loss      INTEGER,
  take_profit    INTEGER,
  open_time_ms   INTEGER NOT NULL,
  order_id       TEXT    NOT NULL,
  signal_id      TEXT    NOT NULL,
  commission     TEXT    NOT NULL,
  realized_pnl   TEXT    NOT NULL,
  closed_time_ms INTEGER NOT NULL,
  open           INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
  seq        INTEGER PRIMARY KEY,
  account_id TEXT    NOT NULL,
  body       TEXT    NOT NULL  -- JSON of the ExecutionReport
);
CREATE TRIGGER IF NOT EXISTS events_append_only BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'execution reports are append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_kept BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'execution reports are append-only'); END;
CREATE TABLE IF NOT EXISTS accounts (
  account_id       TEXT    PRIMARY KEY,
  currency         TEXT    NOT NULL,
  starting_balance TEXT    NOT NULL,
  balance          TEXT    NOT NULL,
  realized         TEXT    NOT NULL,
  commission       TEXT    NOT NULL,
  broker_cursor    INTEGER NOT NULL  -- seq of the last broker journal event applied
);
CREATE TABLE IF NOT EXISTS quotes (
  symbol  TEXT    PRIMARY KEY,
  bid     INTEGER NOT NULL,
  ask     INTEGER NOT NULL,
  time_ms INTEGER NOT NULL,
  seq     INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS day_starts (
  account_id TEXT    NOT NULL,
  day        INTEGER NOT NULL,  -- UTC day number (epoch ms // 86,400,000)
  equity     TEXT    NOT NULL,  -- equity when the market day began
  PRIMARY KEY (account_id, day)
);
CREATE TABLE IF NOT EXISTS counters (
  name  TEXT    PRIMARY KEY,
  value INTEGER NOT NULL
);
