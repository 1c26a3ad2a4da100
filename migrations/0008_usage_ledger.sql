-- Usage ledger: one row per (hour, tenant, user, key, subscription, model, chargeback
-- attributes), written behind by every replica with an additive upsert, so replicas writing the
-- same hour add up instead of overwriting each other. Cost is in pico-units (10^-12) of the
-- billing currency (MAAS_AUTHZ_BILLING_CURRENCY): an integer, never a float. The chargeback
-- attributes are copied at write time, so a later policy change does not rewrite history.
CREATE TABLE IF NOT EXISTS usage_ledger (
    hour              TIMESTAMPTZ NOT NULL,
    tenant            TEXT        NOT NULL,
    username          TEXT        NOT NULL,
    key_id            TEXT        NOT NULL,
    subscription      TEXT        NOT NULL,
    model             TEXT        NOT NULL,
    organization_id   TEXT        NOT NULL DEFAULT '',
    cost_center       TEXT        NOT NULL DEFAULT '',
    requests          BIGINT      NOT NULL DEFAULT 0,
    rate_limited      BIGINT      NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT      NOT NULL DEFAULT 0,
    completion_tokens BIGINT      NOT NULL DEFAULT 0,
    total_tokens      BIGINT      NOT NULL DEFAULT 0,
    estimated_tokens  BIGINT      NOT NULL DEFAULT 0,
    cost_pico         NUMERIC(38, 0) NOT NULL DEFAULT 0,
    -- tokenMetadata.labels of the subscription and the key's labels, as first written.
    labels            JSONB,
    key_labels        JSONB,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, hour, username, key_id, subscription, model, organization_id, cost_center)
);

-- Batches already added: a flush whose answer was lost (timeout, connection cut after the
-- commit) is retried with the same id and skipped, so no row is ever added twice.
CREATE TABLE IF NOT EXISTS usage_ledger_batches (
    batch_id   TEXT        PRIMARY KEY,
    written_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Reports filter by tenant and time, often by user; retention deletes by time.
CREATE INDEX IF NOT EXISTS idx_usage_ledger_tenant_user_hour ON usage_ledger (tenant, username, hour);
CREATE INDEX IF NOT EXISTS idx_usage_ledger_hour ON usage_ledger (hour);
