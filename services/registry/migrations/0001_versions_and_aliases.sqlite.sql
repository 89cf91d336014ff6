-- Model registry metadata. IF NOT EXISTS: a registry created before the relational
-- port (same tables, no migration ledger) is adopted as version 1.
CREATE TABLE IF NOT EXISTS versions (
  name          TEXT    NOT NULL,
  version       INTEGER NOT NULL CHECK (version >= 1),
  sha256        TEXT    NOT NULL CHECK (length(sha256) = 64),
  feature_names TEXT    NOT NULL,  -- JSON array of strings, the model's input order
  metrics       TEXT    NOT NULL,  -- JSON object: metric name -> number
  params        TEXT    NOT NULL,  -- JSON object: param name -> string
  data_from_ms  INTEGER NOT NULL,
  data_to_ms    INTEGER NOT NULL,
  created_ms    INTEGER NOT NULL,
  description   TEXT    NOT NULL,
  PRIMARY KEY (name, version),
  UNIQUE (name, sha256)
);
CREATE TABLE IF NOT EXISTS aliases (
  name       TEXT    NOT NULL,
  alias      TEXT    NOT NULL,
  version    INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL,
  PRIMARY KEY (name, alias),
  FOREIGN KEY (name, version) REFERENCES versions (name, version)
);
