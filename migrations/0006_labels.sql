-- Immutable key labels (a JSON object or NULL), as upstream migration 0006.
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS labels JSONB DEFAULT NULL;
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'api_keys_labels_is_object' AND conrelid = 'api_keys'::regclass
    ) THEN
        ALTER TABLE api_keys ADD CONSTRAINT api_keys_labels_is_object
            CHECK (labels IS NULL OR jsonb_typeof(labels) = 'object');
    END IF;
END
$$;
-- Upstream builds this one CONCURRENTLY at start-up; inside our migration transaction a plain
-- build is equivalent for a new table and a no-op where upstream already made it.
CREATE INDEX IF NOT EXISTS idx_api_keys_labels_gin ON api_keys USING GIN (labels jsonb_path_ops);
