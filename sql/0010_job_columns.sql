-- jobpub schema, version 10: expiry, dedupe keys, MQTT 5 properties, binary payloads and
-- a `state` column (docs/jobs.md). Catalog changes only, safe on a live 10M-row table:
-- every column is nullable or has a constant default (PostgreSQL 11+ stores it in the
-- catalog, no rewrite), constraints are NOT VALID (no scan). The ACCESS EXCLUSIVE lock
-- lasts for the catalog change; `jobpub migrate` waits for it with lock_timeout.

-- The schedules migration adds expires_at too; both add it only if missing.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS expires_at timestamptz;
ALTER TABLE jobs
    -- Set with processed when a row ended expired instead of published.
    ADD COLUMN IF NOT EXISTS expired_at       timestamptz,
    ADD COLUMN IF NOT EXISTS dedupe_key       text,
    ADD COLUMN IF NOT EXISTS content_type     text,
    ADD COLUMN IF NOT EXISTS user_properties  jsonb,
    ADD COLUMN IF NOT EXISTS response_topic   text,
    ADD COLUMN IF NOT EXISTS correlation_data bytea,
    -- Published instead of `payload` when set (then `payload` stays '', its default).
    ADD COLUMN IF NOT EXISTS payload_bytes    bytea,
    -- A plain column, not GENERATED … STORED: adding a stored generated column rewrites
    -- the whole table under ACCESS EXCLUSIVE. Rows already there read the constant
    -- default 'published' from the catalog (no rewrite): right for processed rows, the
    -- bulk of a kept table; version 11 corrects the unsettled ones.
    ADD COLUMN state text NOT NULL DEFAULT 'published';
ALTER TABLE jobs ALTER COLUMN state SET DEFAULT 'pending';

-- What `state` must say, from the columns that decide it. An expired row is processed
-- (it left the queue, and retention prunes it with published rows) with expired_at set.
CREATE OR REPLACE FUNCTION jobpub_job_state(
    processed boolean, failed_at timestamptz, expired_at timestamptz
) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE
        WHEN processed AND expired_at IS NOT NULL THEN 'expired'
        WHEN processed THEN 'published'
        WHEN failed_at IS NOT NULL THEN 'dead'
        ELSE 'pending'
    END
$$;

-- Keeps `state` right for every writer: plain SQL (the seed's INSERT with processed,
-- an operator's UPDATE) and the daemon. The daemon's statements set `state` themselves,
-- so the WHEN (evaluated without calling the function) is false and nothing runs for
-- them; the function runs only for a row whose `state` would be wrong.
CREATE OR REPLACE FUNCTION jobpub_set_state() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.state := jobpub_job_state(NEW.processed, NEW.failed_at, NEW.expired_at);
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS jobs_state ON jobs;
CREATE TRIGGER jobs_state
    BEFORE INSERT OR UPDATE ON jobs
    FOR EACH ROW
    WHEN (NEW.state IS DISTINCT FROM jobpub_job_state(NEW.processed, NEW.failed_at, NEW.expired_at))
    EXECUTE FUNCTION jobpub_set_state();

-- Checks on pending rows, exempt once settled like version 5's. A binary payload goes in
-- payload_bytes with `payload` left at its default ''; a row with both is ambiguous.
-- User properties: a JSON object of strings (MQTT user properties are string pairs).
ALTER TABLE jobs
    ADD CONSTRAINT jobs_one_payload
        CHECK (processed OR failed_at IS NOT NULL OR payload_bytes IS NULL OR payload = '')
        NOT VALID,
    ADD CONSTRAINT jobs_user_properties_strings
        CHECK (processed OR failed_at IS NOT NULL OR user_properties IS NULL
               OR (jsonb_typeof(user_properties) = 'object'
                   AND NOT jsonb_path_exists(user_properties, '$.* ? (@.type() != "string")')))
        NOT VALID,
    ADD CONSTRAINT jobs_expires_at_finite
        CHECK (processed OR failed_at IS NOT NULL OR expires_at IS NULL
               OR isfinite(expires_at)) NOT VALID,
    ADD CONSTRAINT jobs_response_topic_no_wildcards
        CHECK (processed OR failed_at IS NOT NULL OR response_topic IS NULL
               OR (response_topic <> '' AND strpos(response_topic, '+') = 0
                   AND strpos(response_topic, '#') = 0)) NOT VALID;

-- The daemon settles rows as expired and writes `state` with every mark.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobpub_daemon') THEN
        GRANT UPDATE (state, expired_at) ON jobs TO jobpub_daemon;
    END IF;
END
$$;
