-- jobpub schema, version 5: the CHECK constraints guard what a replica will publish, so
-- a settled row (processed or dead) is exempt from them. An UPDATE re-checks every CHECK
-- constraint on the new row version, NOT VALID or not: a row left from before adoption
-- that breaks one could not even be marked dead, and the settle of its whole batch,
-- already acknowledged by the broker, failed on every claim. Same names, and the same
-- conditions for pending rows, so INSERTs are refused exactly as before.
-- Safe on a live table: NOT VALID and nothing else in this transaction, so the ACCESS
-- EXCLUSIVE lock lasts only for the catalog change (no scan). Version 6 settles the rows
-- already there that break them, under no more than row locks.
ALTER TABLE jobs
    DROP CONSTRAINT IF EXISTS jobs_topic_not_empty,
    DROP CONSTRAINT IF EXISTS jobs_topic_no_wildcards,
    DROP CONSTRAINT IF EXISTS jobs_topic_max_length,
    DROP CONSTRAINT IF EXISTS jobs_topic_no_control_characters,
    DROP CONSTRAINT IF EXISTS jobs_qos_valid,
    DROP CONSTRAINT IF EXISTS jobs_attempts_not_negative,
    DROP CONSTRAINT IF EXISTS jobs_fire_at_finite,
    ADD CONSTRAINT jobs_topic_not_empty
        CHECK (processed OR failed_at IS NOT NULL OR topic <> '') NOT VALID,
    ADD CONSTRAINT jobs_topic_no_wildcards
        CHECK (processed OR failed_at IS NOT NULL
               OR (strpos(topic, '+') = 0 AND strpos(topic, '#') = 0)) NOT VALID,
    ADD CONSTRAINT jobs_topic_max_length
        CHECK (processed OR failed_at IS NOT NULL OR octet_length(topic) <= 65535) NOT VALID,
    ADD CONSTRAINT jobs_topic_no_control_characters
        CHECK (processed OR failed_at IS NOT NULL OR topic !~ '[\x01-\x1f\x7f-\x9f]') NOT VALID,
    ADD CONSTRAINT jobs_qos_valid
        CHECK (processed OR failed_at IS NOT NULL OR qos IN (0, 1, 2)) NOT VALID,
    ADD CONSTRAINT jobs_attempts_not_negative
        CHECK (processed OR failed_at IS NOT NULL OR attempts >= 0) NOT VALID,
    ADD CONSTRAINT jobs_fire_at_finite
        CHECK (processed OR failed_at IS NOT NULL OR isfinite(fire_at)) NOT VALID;
