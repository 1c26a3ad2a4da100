-- The hash is unique per tenant rather than globally, as upstream migration 0005.
CREATE UNIQUE INDEX IF NOT EXISTS idx_api_keys_key_hash_tenant ON api_keys (key_hash, tenant);
DROP INDEX IF EXISTS idx_api_keys_key_hash;
