-- Keys belong to a tenant; lookups are by (key_hash, tenant), as upstream migration 0004.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS tenant TEXT NOT NULL DEFAULT 'models-as-a-service';
CREATE INDEX IF NOT EXISTS idx_api_keys_tenant_username_created
    ON api_keys (tenant, username, created_at DESC);
