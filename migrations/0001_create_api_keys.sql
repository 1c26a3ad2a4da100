-- The api_keys table as upstream maas-api created it in its migration 0001.
-- Idempotent (IF NOT EXISTS) so it also applies cleanly to a database upstream already migrated.
CREATE TABLE IF NOT EXISTS api_keys (
    id           TEXT PRIMARY KEY,
    username     TEXT NOT NULL,
    name         TEXT NOT NULL,
    description  TEXT,
    key_hash     TEXT NOT NULL,
    status       TEXT NOT NULL DEFAULT 'active'
                 CHECK (status IN ('active', 'revoked', 'expired')),
    user_groups  TEXT[] NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ
);

CREATE UNIQUE INDEX IF NOT EXISTS idx_api_keys_key_hash ON api_keys (key_hash);
CREATE INDEX IF NOT EXISTS idx_api_keys_username_created ON api_keys (username, created_at DESC);
CREATE INDEX IF NOT EXISTS idx_api_keys_last_used ON api_keys (last_used_at)
    WHERE last_used_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS idx_api_keys_user_groups ON api_keys USING GIN (user_groups);
