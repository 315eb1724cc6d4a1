-- jobpub schema, version 6: pending rows left from before adoption that no replica can
-- publish end dead now, with their reason, not in a claim: each breaks one of the
-- constraints of version 5 (which exempt dead rows, so this UPDATE cannot fail), and rows
-- inserted from now on are checked at INSERT, so the claim never has to test for them.
-- A NULL topic or payload (an adopted table's columns may allow NULL) goes dead too; the
-- claim also refuses those, since they are not refused at INSERT. A negative `attempts` is
-- jobpub's own bookkeeping: set back to 0, not dead.
-- Row locks only: producers' INSERTs go on. The pending test is repeated on the target so
-- a row a replica settles meanwhile is re-checked, not marked twice.
UPDATE jobs
SET failed_at = CASE WHEN checked.reason IS NOT NULL THEN now() END,
    last_error = coalesce(checked.reason, jobs.last_error),
    attempts = greatest(jobs.attempts, 0)
FROM (
    SELECT id, attempts, CASE
        WHEN topic IS NULL THEN 'topic is NULL'
        WHEN payload IS NULL THEN 'payload is NULL'
        WHEN topic = '' THEN 'topic is empty'
        WHEN strpos(topic, '+') > 0 OR strpos(topic, '#') > 0
            THEN 'topic has a wildcard (+ or #): MQTT cannot publish to a filter'
        WHEN octet_length(topic) > 65535 THEN 'topic is longer than 65535 bytes'
        WHEN topic ~ '[\x01-\x1f\x7f-\x9f]' THEN 'topic has a control character'
        WHEN qos IS NULL OR qos NOT IN (0, 1, 2)
            THEN 'qos ' || coalesce(qos::text, 'NULL') || ' is not 0, 1 or 2'
        WHEN NOT isfinite(fire_at) THEN 'fire_at is ' || fire_at::text || ', not a time'
    END AS reason
    FROM jobs
    WHERE NOT processed AND failed_at IS NULL
) AS checked
WHERE jobs.id = checked.id
  AND (checked.reason IS NOT NULL OR checked.attempts < 0)
  AND NOT jobs.processed AND jobs.failed_at IS NULL;
