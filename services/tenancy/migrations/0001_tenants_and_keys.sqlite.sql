-- Tenants and their API keys. A key's secret is never stored: only its SHA-256.
CREATE TABLE tenants (
  tenant_id       TEXT    PRIMARY KEY,
  name            TEXT    NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
  tier            INTEGER NOT NULL CHECK (tier BETWEEN 1 AND 4),
  suspended       INTEGER NOT NULL DEFAULT 0 CHECK (suspended IN (0, 1)),
  created_time_ms INTEGER NOT NULL
);
CREATE TABLE api_keys (
  key_id            TEXT    PRIMARY KEY,
  tenant_id         TEXT    NOT NULL REFERENCES tenants (tenant_id),
  secret_sha256     TEXT    NOT NULL UNIQUE CHECK (length(secret_sha256) = 64),
  label             TEXT    NOT NULL,
  scopes            TEXT    NOT NULL,  -- JSON array of strings
  created_time_ms   INTEGER NOT NULL,
  expire_time_ms    INTEGER NOT NULL,
  revoked_time_ms   INTEGER NOT NULL DEFAULT 0,
  last_used_time_ms INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX api_keys_by_tenant ON api_keys (tenant_id);
