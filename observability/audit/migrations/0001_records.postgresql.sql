-- The decision log: one row per record, chained by SHA-256 (see audit.proto).
CREATE TABLE audit_records (
  idx          BIGINT PRIMARY KEY CHECK (idx >= 0),   -- the record's index in the chain
  decision_id  TEXT   NOT NULL CHECK (decision_id <> ''),
  trace_id     TEXT   NOT NULL,                       -- '' when the decision had no trace
  kind         INTEGER NOT NULL CHECK (kind >= 1),
  payload_json TEXT   NOT NULL,                       -- canonical JSON (RFC 8785)
  time_ns      BIGINT NOT NULL,
  producer     TEXT   NOT NULL,
  prev_hash    BYTEA  NOT NULL CHECK (length(prev_hash) = 32),
  hash         BYTEA  NOT NULL CHECK (length(hash) = 32)
);
CREATE INDEX audit_records_by_decision ON audit_records (decision_id, idx);
CREATE INDEX audit_records_by_trace ON audit_records (trace_id, idx);
-- Append-only: the database itself refuses a change, a deletion, a truncation or a
-- record that does not extend the head, whoever writes.
CREATE FUNCTION audit_records_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' THEN
    RAISE EXCEPTION 'the audit log is append-only: a record cannot be changed';
  END IF;
  RAISE EXCEPTION 'the audit log is append-only: a record cannot be deleted';
END
$$;
CREATE TRIGGER audit_records_no_update_or_delete BEFORE UPDATE OR DELETE ON audit_records
  FOR EACH ROW EXECUTE FUNCTION audit_records_refuse_change();
CREATE TRIGGER audit_records_no_truncate BEFORE TRUNCATE ON audit_records
  FOR EACH STATEMENT EXECUTE FUNCTION audit_records_refuse_change();
CREATE FUNCTION audit_records_extend_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.idx IS DISTINCT FROM (SELECT coalesce(max(idx), -1) + 1 FROM audit_records)
     OR NEW.prev_hash IS DISTINCT FROM coalesce(
          (SELECT hash FROM audit_records WHERE idx = NEW.idx - 1), decode(repeat('00', 32), 'hex'))
  THEN
    RAISE EXCEPTION 'the audit log is append-only: a record must extend the head';
  END IF;
  RETURN NEW;
END
$$;
CREATE TRIGGER audit_records_extend_head BEFORE INSERT ON audit_records
  FOR EACH ROW EXECUTE FUNCTION audit_records_extend_head();
