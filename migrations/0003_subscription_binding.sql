-- Every key is bound to one MaaSSubscription at mint, as upstream migration 0003.
-- Rows from before binding get '' and are refused at validation ("no subscription bound").
ALTER TABLE api_keys ADD COLUMN IF NOT EXISTS subscription TEXT NOT NULL DEFAULT '';
ALTER TABLE api_keys ALTER COLUMN subscription DROP DEFAULT;
