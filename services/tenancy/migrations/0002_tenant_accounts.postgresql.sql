-- Trading accounts belong to a tenant; money is decimal text, never a float.
CREATE TABLE tenant_accounts (
  account_id       TEXT    PRIMARY KEY CHECK (length(account_id) BETWEEN 1 AND 64),
  tenant_id        TEXT    NOT NULL REFERENCES tenants (tenant_id),
  currency         TEXT    NOT NULL CHECK (length(currency) = 3),
  starting_balance TEXT    NOT NULL,
  created_time_ms  BIGINT  NOT NULL
);
CREATE INDEX tenant_accounts_by_tenant ON tenant_accounts (tenant_id);
