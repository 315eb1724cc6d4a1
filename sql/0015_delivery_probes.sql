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

-- The one probe topic a role without INSERT on jobs (jobpub_daemon) may schedule probes
-- on. The owner sets it (jobpub_allow_probe_topic): granting jobpub_daemon the probe must
-- not grant it jobs on topics of its choosing, which versions 2 and 7 withheld.
CREATE TABLE IF NOT EXISTS delivery_probe_topic (
    one   boolean PRIMARY KEY DEFAULT true CHECK (one),
    topic text    NOT NULL
);

-- Why `probe_topic` may not carry a probe (NULL if it may): what jobs' own CHECKs say,
-- as a message that names the probe.
CREATE OR REPLACE FUNCTION jobpub_probe_topic_problem(probe_topic text)
RETURNS text
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog AS $$
    SELECT CASE
        WHEN probe_topic IS NULL OR probe_topic = '' THEN 'probe topic is empty'
        WHEN strpos(probe_topic, '+') > 0 OR strpos(probe_topic, '#') > 0
            THEN 'probe topic contains a wildcard (+ or #)'
        WHEN octet_length(probe_topic) > 65535 THEN 'probe topic is longer than 65,535 bytes'
        WHEN probe_topic ~ '[\x01-\x1f\x7f-\x9f]'
            THEN 'probe topic contains a control character'
    END
$$;

-- As the owner: let jobpub_daemon's replicas probe `probe_topic` (replacing any other).
CREATE OR REPLACE FUNCTION jobpub_allow_probe_topic(probe_topic text)
RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
    problem text := jobpub_probe_topic_problem(probe_topic);
BEGIN
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO delivery_probe_topic (topic) VALUES (probe_topic)
    ON CONFLICT (one) DO UPDATE SET topic = EXCLUDED.topic;
END
$$;
REVOKE ALL ON FUNCTION jobpub_allow_probe_topic(text) FROM PUBLIC;

-- Schedule the probe of the next slot: slots are multiples of `every_s` seconds since the
-- epoch (database clock), so every replica names the same slot, and the dedupe key makes
-- it one jobs row however many replicas race. Returns the slot's fire_at. SECURITY
-- DEFINER: jobpub_daemon may not INSERT into jobs; this function may, for probes only:
-- payload and key fixed, at most two a second, and (for a caller who may not INSERT into
-- jobs itself) only on the topic the owner allowed. session_user, not current_user (the
-- owner, in here): a login role cannot change it, and a superuser gains nothing by it.
CREATE OR REPLACE FUNCTION jobpub_schedule_probe(probe_topic text, every_s double precision)
RETURNS timestamptz
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    problem text := jobpub_probe_topic_problem(probe_topic);
    allowed text;
    slot timestamptz;
    key text;
    new_id bigint;
BEGIN
    IF every_s IS NULL OR NOT every_s BETWEEN 0.5 AND 86400 THEN
        RAISE EXCEPTION 'probe interval must be 0.5 to 86400 seconds, not %', every_s
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION '%', problem USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF NOT has_table_privilege(session_user, 'jobs', 'INSERT') THEN
        SELECT topic INTO allowed FROM delivery_probe_topic;
        IF allowed IS DISTINCT FROM probe_topic THEN
            RAISE EXCEPTION 'probe topic % is not the one the database owner allowed (%)',
                quote_literal(probe_topic), coalesce(quote_literal(allowed), 'none')
                USING ERRCODE = 'insufficient_privilege',
                      HINT = format('as the owner: SELECT jobpub_allow_probe_topic(%L)',
                                    probe_topic);
        END IF;
    END IF;
    slot := to_timestamp((floor(extract(epoch FROM now()) / every_s) + 1) * every_s);
    key := 'jobpub-probe:' || (extract(epoch FROM slot) * 1000)::bigint;
    INSERT INTO jobs (topic, payload, qos, fire_at, dedupe_key)
    VALUES (probe_topic, key, 1, slot, key)
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NOT NULL THEN
        -- A slot scheduled again (its job was cancelled, so its key was free) follows
        -- its new job: the sweep and the status go by job_id.
        INSERT INTO delivery_probes (probe_key, topic, fire_at, job_id)
        VALUES (key, probe_topic, slot, new_id)
        ON CONFLICT (probe_key) DO UPDATE
            SET job_id = EXCLUDED.job_id, topic = EXCLUDED.topic;
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
