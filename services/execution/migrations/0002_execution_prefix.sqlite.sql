-- In a database shared by every service, execution's tables take the execution_ prefix
-- (SQLite rewrites the triggers' references). Fills and positions get an explicit
-- insertion order, which PostgreSQL has no rowid for.
ALTER TABLE orders RENAME TO execution_orders;
ALTER TABLE order_transitions RENAME TO execution_order_transitions;
ALTER TABLE fills RENAME TO execution_fills;
ALTER TABLE positions RENAME TO execution_positions;
ALTER TABLE events RENAME TO execution_reports;
ALTER TABLE accounts RENAME TO execution_accounts;
ALTER TABLE quotes RENAME TO execution_quotes;
ALTER TABLE day_starts RENAME TO execution_day_starts;
ALTER TABLE counters RENAME TO execution_counters;
ALTER TABLE execution_fills ADD COLUMN booked_seq INTEGER;
UPDATE execution_fills SET booked_seq = rowid;
CREATE UNIQUE INDEX execution_fills_by_booking ON execution_fills (booked_seq);
ALTER TABLE execution_positions ADD COLUMN opened_seq INTEGER;
UPDATE execution_positions SET opened_seq = rowid;
CREATE UNIQUE INDEX execution_positions_by_opening ON execution_positions (opened_seq);
