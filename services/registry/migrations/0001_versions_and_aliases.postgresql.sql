-- Model registry metadata (the ONNX artifacts stay content-addressed files).
CREATE TABLE IF NOT EXISTS versions (
  name          TEXT    NOT NULL,
  version       INTEGER NOT NULL CHECK (version >= 1),
  sha256        TEXT    NOT NULL CHECK (length(sha256) = 64),
  feature_names TEXT    NOT NULL,  -- JSON array of strings, the model's input order
  metrics       TEXT    NOT NULL,  -- JSON object: metric name -> number
  params        TEXT    NOT NULL,  -- JSON object: param name -> string
  data_from_ms  BIGINT  NOT NULL,
  data_to_ms    BIGINT  NOT NULL,
  created_ms    BIGINT  NOT NULL,
  description   TEXT    NOT NULL,
  PRIMARY KEY (name, version),
  UNIQUE (name, sha256)
);
CREATE TABLE IF NOT EXISTS aliases (
  name       TEXT    NOT NULL,
  alias      TEXT    NOT NULL,
  version    INTEGER NOT NULL,
  updated_ms BIGINT  NOT NULL,
  PRIMARY KEY (name, alias),
  FOREIGN KEY (name, version) REFERENCES versions (name, version)
);
