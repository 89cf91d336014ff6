-- The decision log: one row per record, chained by SHA-256 (see audit.proto).
CREATE TABLE audit_records (
  idx          INTEGER PRIMARY KEY CHECK (idx >= 0),  -- the record's index in the chain
  decision_id  TEXT    NOT NULL CHECK (decision_id <> ''),
  trace_id     TEXT    NOT NULL,                      -- '' when the decision had no trace
  kind         INTEGER NOT NULL CHECK (kind >= 1),
  payload_json TEXT    NOT NULL,                      -- canonical JSON (RFC 8785)
  time_ns      INTEGER NOT NULL,
  producer     TEXT    NOT NULL,
  prev_hash    BLOB    NOT NULL CHECK (length(prev_hash) = 32),
  hash         BLOB    NOT NULL CHECK (length(hash) = 32)
);
CREATE INDEX audit_records_by_decision ON audit_records (decision_id, idx);
CREATE INDEX audit_records_by_trace ON audit_records (trace_id, idx);
-- Append-only: the database itself refuses a change, a deletion or a record that does
-- not extend the head, whoever writes.
CREATE TRIGGER audit_records_no_update BEFORE UPDATE ON audit_records
BEGIN
  SELECT RAISE(ABORT, 'the audit log is append-only: a record cannot be changed');
END;
CREATE TRIGGER audit_records_no_delete BEFORE DELETE ON audit_records
BEGIN
  SELECT RAISE(ABORT, 'the audit log is append-only: a record cannot be deleted');
END;
CREATE TRIGGER audit_records_extend_head BEFORE INSERT ON audit_records
WHEN NEW.idx IS NOT (SELECT coalesce(max(idx), -1) + 1 FROM audit_records)
  OR NEW.prev_hash IS NOT coalesce(
       (SELECT hash FROM audit_records WHERE idx = NEW.idx - 1), zeroblob(32))
BEGIN
  SELECT RAISE(ABORT, 'the audit log is append-only: a record must extend the head');
END;
