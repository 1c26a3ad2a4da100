-- Push invalidation: every change to a key that can alter a Check decision (status change,
-- deletion, and inserts, which must clear "unknown key" cache entries) notifies all replicas
-- listening on channel maas_authz_key_changes. The payload is the key hash (not secret).
-- NOTIFY is delivered at COMMIT, so listeners never see a change that was rolled back.
CREATE OR REPLACE FUNCTION maas_authz_notify_key_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('maas_authz_key_changes', OLD.key_hash);
        RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' OR NEW.status IS DISTINCT FROM OLD.status
       OR NEW.expires_at IS DISTINCT FROM OLD.expires_at
       OR NEW.key_hash IS DISTINCT FROM OLD.key_hash THEN
        PERFORM pg_notify('maas_authz_key_changes', NEW.key_hash);
        IF TG_OP = 'UPDATE' AND NEW.key_hash IS DISTINCT FROM OLD.key_hash THEN
            PERFORM pg_notify('maas_authz_key_changes', OLD.key_hash);
        END IF;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS maas_authz_key_change_notify ON api_keys;
CREATE TRIGGER maas_authz_key_change_notify
    AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION maas_authz_notify_key_change();
