-- jobpub schema, version 15: the end-to-end delivery probe (JOBPUB_PROBE_TOPIC,
-- docs/reliability.md). Every replica schedules the next probe slot through
-- jobpub_schedule_probe: an ordinary jobs row, published like any other. One replica,
-- elected by an advisory lock, subscribes to the probe topic and records each probe's
-- arrival here; a probe published but not received in time is marked missing.
--   SELECT * FROM latest_probe_status();  -- the last hour at a glance

CREATE TABLE IF NOT EXISTS delivery_probes (
    -- The probe job's dedupe_key, and its payload: what the subscriber reads back.
    probe_key   text        PRIMARY KEY,
    topic       text        NOT NULL,
    fire_at     timestamptz NOT NULL,
    job_id      bigint      NOT NULL,
    -- Database clock when the subscriber recorded it: received_at - fire_at is the
    -- delivery latency (plus the one round trip of recording it).
    received_at timestamptz,
    -- Set once, when the probe was published but not received within JOBPUB_PROBE_TIMEOUT.
    missing_at  timestamptz
);

-- The status reads and the daily clean-up go by time; the missing sweep by the open ones.
CREATE INDEX IF NOT EXISTS delivery_probes_fire_at_idx ON delivery_probes (fire_at);
CREATE INDEX IF NOT EXISTS delivery_probes_open_idx ON delivery_probes (fire_at)
    WHERE received_at IS NULL AND missing_at IS NULL;

-- Schedule the probe of the next slot: slots are multiples of `every_s` seconds since the
-- epoch (database clock), so every replica names the same slot, and the dedupe key makes
-- it one jobs row however many replicas race. Returns the slot's fire_at. SECURITY
-- DEFINER: jobpub_daemon may not INSERT into jobs; this function may, for probes only.
CREATE OR REPLACE FUNCTION jobpub_schedule_probe(probe_topic text, every_s double precision)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    slot timestamptz;
    key text;
    new_id bigint;
BEGIN
    IF every_s IS NULL OR every_s <= 0 THEN
        RAISE EXCEPTION 'probe interval must be positive, not %', every_s;
    END IF;
    slot := to_timestamp((floor(extract(epoch FROM now()) / every_s) + 1) * every_s);
    key := 'jobpub-probe:' || (extract(epoch FROM slot) * 1000)::bigint;
    INSERT INTO jobs (topic, payload, qos, fire_at, dedupe_key)
    VALUES (probe_topic, key, 1, slot, key)
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NOT NULL THEN
        INSERT INTO delivery_probes (probe_key, topic, fire_at, job_id)
        VALUES (key, probe_topic, slot, new_id)
        ON CONFLICT (probe_key) DO NOTHING;
    END IF;
    RETURN slot;
END
$$;
REVOKE ALL ON FUNCTION jobpub_schedule_probe(text, double precision) FROM PUBLIC;

-- What `jobpub web` shows (/api/stats, the overview): the last probe received and its
-- latency, and how many probes were received and marked missing within `since`.
CREATE OR REPLACE FUNCTION latest_probe_status(since interval DEFAULT interval '1 hour')
RETURNS TABLE (
    last_fire_at     timestamptz,
    last_received_at timestamptz,
    last_latency_s   double precision,
    received         bigint,
    missing          bigint
)
LANGUAGE sql STABLE AS $$
    SELECT last.fire_at, last.received_at,
           extract(epoch FROM last.received_at - last.fire_at)::float8,
           (SELECT count(*) FROM delivery_probes
            WHERE fire_at >= now() - since AND received_at IS NOT NULL),
           (SELECT count(*) FROM delivery_probes
            WHERE fire_at >= now() - since AND missing_at IS NOT NULL)
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (
        SELECT fire_at, received_at FROM delivery_probes
        WHERE fire_at >= now() - since AND received_at IS NOT NULL
        ORDER BY fire_at DESC LIMIT 1
    ) AS last ON true
$$;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobpub_daemon') THEN
        GRANT SELECT, UPDATE (received_at, missing_at), DELETE
            ON delivery_probes TO jobpub_daemon;
        GRANT EXECUTE ON FUNCTION jobpub_schedule_probe(text, double precision)
            TO jobpub_daemon;
    END IF;
END
$$;
