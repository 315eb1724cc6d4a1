-- jobpub schema, version 2: `jobpub_daemon`, a group role with exactly what `jobpub run`
-- needs: read the jobs table, update the delivery columns, and nothing else (no INSERT,
-- DELETE, DDL, or other tables). Give it to a login role:
--   CREATE ROLE publisher LOGIN PASSWORD '…' IN ROLE jobpub_daemon;
-- Creating the role needs CREATEROLE; without it (a managed database, say) the grants
-- are made only if an administrator created the role first.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobpub_daemon') THEN
        CREATE ROLE jobpub_daemon NOLOGIN;
    END IF;
EXCEPTION
    WHEN duplicate_object THEN NULL;  -- another database's migration created it just now
    WHEN insufficient_privilege THEN
        RAISE NOTICE 'jobpub_daemon not created: this user lacks CREATEROLE';
END
$$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobpub_daemon') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO jobpub_daemon', current_database());
        GRANT USAGE ON SCHEMA public TO jobpub_daemon;
        GRANT SELECT ON jobs TO jobpub_daemon;
        GRANT UPDATE (processed, processed_at, attempts, last_error, next_attempt_at, failed_at)
            ON jobs TO jobpub_daemon;
    END IF;
END
$$;
