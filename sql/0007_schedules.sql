-- jobpub schema, version 7: recurring schedules (docs/schedules.md). A schedule is a row
-- of `schedules`, managed with plain SQL; replicas materialise each occurrence ahead of
-- time as one `jobs` row (schedule_name, occurrence_at), published by the normal claim.

-- Expiry belongs to another migration too; both add it only if missing.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS expires_at timestamptz;
-- The schedule a row came from and the occurrence it stands for (with a spread, fire_at
-- is later than the occurrence). No foreign key: published rows outlive their schedule.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS schedule_name text;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS occurrence_at timestamptz;

CREATE TABLE IF NOT EXISTS schedules (
    name               text        PRIMARY KEY,
    topic              text        NOT NULL,
    payload            text        NOT NULL DEFAULT '',
    every              interval,
    cron               text,
    timezone           text        NOT NULL DEFAULT 'UTC',
    qos                smallint    NOT NULL DEFAULT 1,
    retain             boolean     NOT NULL DEFAULT false,
    starts_at          timestamptz,
    ends_at            timestamptz,
    enabled            boolean     NOT NULL DEFAULT true,
    spread             interval    NOT NULL DEFAULT interval '0',
    expire_after       interval,
    catch_up           text        NOT NULL DEFAULT 'latest',
    -- Occurrences up to here are materialised; the next one is after it. A new or
    -- changed schedule starts from now(): its first occurrence is the next one to come.
    materialised_until timestamptz NOT NULL DEFAULT now(),
    -- Why the materialiser disabled this schedule (an invalid cron expression, say).
    disabled_reason    text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_every_or_cron CHECK ((every IS NULL) <> (cron IS NULL)),
    -- Months and years have no fixed length; `every` is a fixed number of seconds.
    CONSTRAINT schedules_every_at_least_a_second CHECK (
        every IS NULL OR (every >= interval '1 second'
                          AND extract(month FROM every) = 0 AND extract(year FROM every) = 0)
    ),
    CONSTRAINT schedules_cron_not_empty CHECK (cron IS NULL OR btrim(cron) <> ''),
    CONSTRAINT schedules_catch_up_valid CHECK (catch_up IN ('all', 'latest', 'none')),
    CONSTRAINT schedules_spread_valid CHECK (spread >= interval '0' AND spread <= interval '1 day'),
    CONSTRAINT schedules_expire_after_positive CHECK (expire_after IS NULL OR expire_after > interval '0'),
    CONSTRAINT schedules_window_ordered CHECK (ends_at IS NULL OR starts_at IS NULL OR starts_at < ends_at),
    -- The jobs table's own checks, so a schedule never makes rows the jobs table refuses.
    CONSTRAINT schedules_topic_not_empty CHECK (topic <> ''),
    CONSTRAINT schedules_topic_no_wildcards CHECK (strpos(topic, '+') = 0 AND strpos(topic, '#') = 0),
    CONSTRAINT schedules_topic_max_length CHECK (octet_length(topic) <= 65535),
    CONSTRAINT schedules_topic_no_control_characters CHECK (topic !~ '[\x01-\x1f\x7f-\x9f]'),
    CONSTRAINT schedules_qos_valid CHECK (qos IN (0, 1, 2))
);

-- Serves the materialiser's pass: enabled schedules whose horizon has room.
CREATE INDEX IF NOT EXISTS schedules_materialise_idx
    ON schedules (materialised_until) WHERE enabled;

-- Refuse an unknown time zone at INSERT. A statement trigger over the new rows:
-- pg_timezone_names reads the zone files on every call, so one anti-join per statement
-- (a bulk INSERT of 10,000 schedules included) instead of one scan per row.
CREATE OR REPLACE FUNCTION jobpub_schedules_check_timezone() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    unknown text;
BEGIN
    SELECT n.timezone INTO unknown
    FROM (SELECT DISTINCT timezone FROM new_schedules WHERE timezone <> 'UTC') AS n
    WHERE NOT EXISTS (SELECT FROM pg_timezone_names z WHERE z.name = n.timezone)
    LIMIT 1;
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'schedules: unknown time zone "%"', unknown
            USING ERRCODE = 'check_violation',
                  HINT = 'use an IANA name from pg_timezone_names, such as Europe/Berlin';
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS schedules_timezone_inserted ON schedules;
CREATE TRIGGER schedules_timezone_inserted
    AFTER INSERT ON schedules
    REFERENCING NEW TABLE AS new_schedules
    FOR EACH STATEMENT EXECUTE FUNCTION jobpub_schedules_check_timezone();
-- An UPDATE checks only a changed time zone (rare), row by row: a statement trigger
-- would scan pg_timezone_names on each of the materialiser's cursor updates too.
CREATE OR REPLACE FUNCTION jobpub_schedules_check_changed_timezone() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.timezone <> 'UTC'
       AND NOT EXISTS (SELECT FROM pg_timezone_names z WHERE z.name = NEW.timezone) THEN
        RAISE EXCEPTION 'schedules: unknown time zone "%"', NEW.timezone
            USING ERRCODE = 'check_violation',
                  HINT = 'use an IANA name from pg_timezone_names, such as Europe/Berlin';
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS schedules_timezone_updated ON schedules;
CREATE TRIGGER schedules_timezone_updated
    AFTER UPDATE OF timezone ON schedules
    FOR EACH ROW WHEN (OLD.timezone IS DISTINCT FROM NEW.timezone)
    EXECUTE FUNCTION jobpub_schedules_check_changed_timezone();

-- A change to what a schedule publishes or when, or a delete, takes effect for every
-- occurrence whose time has not come: its pending rows go, and (on a change) the
-- materialiser makes them again from now under the new definition. Rows a replica is
-- publishing right now are locked; SKIP LOCKED leaves them (they are being published).
-- SECURITY DEFINER: the materialiser's role (jobpub_daemon) may not DELETE jobs itself,
-- yet disabling an invalid schedule must drop its pending rows.
CREATE OR REPLACE FUNCTION jobpub_schedules_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    DELETE FROM jobs
    WHERE id IN (
        SELECT id FROM jobs
        WHERE schedule_name = OLD.name AND occurrence_at > now()
          AND NOT processed AND failed_at IS NULL
        FOR UPDATE SKIP LOCKED
    );
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    NEW.materialised_until := now();
    NEW.updated_at := now();
    IF NEW.enabled THEN
        NEW.disabled_reason := NULL;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS schedules_changed ON schedules;
CREATE TRIGGER schedules_changed
    BEFORE UPDATE ON schedules
    FOR EACH ROW
    WHEN ((OLD.name, OLD.topic, OLD.payload, OLD.every, OLD.cron, OLD.timezone, OLD.qos,
           OLD.retain, OLD.starts_at, OLD.ends_at, OLD.enabled, OLD.spread,
           OLD.expire_after, OLD.catch_up)
          IS DISTINCT FROM
          (NEW.name, NEW.topic, NEW.payload, NEW.every, NEW.cron, NEW.timezone, NEW.qos,
           NEW.retain, NEW.starts_at, NEW.ends_at, NEW.enabled, NEW.spread,
           NEW.expire_after, NEW.catch_up))
    EXECUTE FUNCTION jobpub_schedules_changed();
DROP TRIGGER IF EXISTS schedules_deleted ON schedules;
CREATE TRIGGER schedules_deleted
    BEFORE DELETE ON schedules
    FOR EACH ROW EXECUTE FUNCTION jobpub_schedules_changed();

-- Materialise occurrences: one jobs row each (the i-th of `schedule_names`,
-- `occurrences` and `fire_ats` together), copying what to publish from the schedule, so
-- a row always matches the definition current in this transaction. One statement for a
-- whole pass (one NOTIFY, one round trip). ON CONFLICT on the unique (schedule_name,
-- occurrence_at) index (version 8) makes an occurrence one row however many replicas
-- race. SECURITY DEFINER: jobpub_daemon may not INSERT into jobs; only this function
-- may, for it, and only rows of existing schedules.
CREATE OR REPLACE FUNCTION jobpub_materialise_occurrences(
    schedule_names text[], occurrences timestamptz[], fire_ats timestamptz[]
) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    inserted integer;
BEGIN
    INSERT INTO jobs (topic, payload, qos, retain, fire_at, expires_at, schedule_name,
                      occurrence_at)
    SELECT s.topic, s.payload, s.qos, s.retain, o.fire_at, o.fire_at + s.expire_after,
           s.name, o.occurrence_at
    FROM unnest(schedule_names, occurrences, fire_ats) AS o (name, occurrence_at, fire_at)
    JOIN schedules s ON s.name = o.name
    ON CONFLICT (schedule_name, occurrence_at) WHERE schedule_name IS NOT NULL DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted;
END
$$;
REVOKE ALL ON FUNCTION jobpub_materialise_occurrences(text[], timestamptz[], timestamptz[])
    FROM PUBLIC;

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobpub_daemon') THEN
        GRANT SELECT, UPDATE (materialised_until, enabled, disabled_reason)
            ON schedules TO jobpub_daemon;
        GRANT EXECUTE
            ON FUNCTION jobpub_materialise_occurrences(text[], timestamptz[], timestamptz[])
            TO jobpub_daemon;
    END IF;
END
$$;
