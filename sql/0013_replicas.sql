-- jobpub schema, version 13: `jobpub_replicas`, the live replicas. Each `jobpub run`
-- registers at start, refreshes heartbeat_at every JOBPUB_HEARTBEAT_INTERVAL seconds and
-- removes its row at a clean stop; any replica deletes rows older than
-- JOBPUB_REPLICA_STALE_AFTER (a killed one). The fleet-wide rate limit divides by the
-- rows left. Small and rewritten often: a low fillfactor keeps heartbeat updates HOT.

CREATE TABLE IF NOT EXISTS jobpub_replicas (
    id           uuid        PRIMARY KEY,
    host         text        NOT NULL,
    version      text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    partition    text        NOT NULL  -- JOBPUB_CONSUMER_INDEX/JOBPUB_CONSUMER_COUNT
) WITH (fillfactor = 50);

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobpub_daemon') THEN
        GRANT SELECT, INSERT, UPDATE, DELETE ON jobpub_replicas TO jobpub_daemon;
    END IF;
END
$$;
