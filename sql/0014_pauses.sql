-- jobpub schema, version 14: pauses by MQTT topic filter. A row here stops every replica
-- claiming the pending rows whose topic the filter matches; deleting it resumes them.
--   INSERT INTO pauses (filter, reason) VALUES ('devices/+/valve/#', 'maintenance');
--   DELETE FROM pauses WHERE filter = 'devices/+/valve/#';
-- The claim statements read this table themselves (jobpub.db.queries, NOT_PAUSED), so no
-- replica can publish a paused row from a stale copy.

CREATE TABLE IF NOT EXISTS pauses (
    filter      text        PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    reason      text,
    -- Computed from `filter` by jobpub_pause_match (below); never written by hand.
    -- first_level: the filter's first level, NULL when it is a wildcard. A claim looks up
    -- only the filters keyed by its row's first level (pauses_first_level_idx) and the
    -- few starting with a wildcard, so its cost per row does not grow with the number of
    -- filters. topic_like: a LIKE pattern every matching topic satisfies (`+` and `#`
    -- become `%`), a cheap test; topic_regex: the exact match, tried on what passes it.
    first_level text,
    topic_like  text        NOT NULL,
    topic_regex text        NOT NULL,
    -- MQTT 3.1.1 4.7 / 5.0 4.7: levels separated by `/`; `+` alone in its level; `#`
    -- alone in the last level; at most 65,535 bytes.
    CONSTRAINT pauses_filter_is_mqtt_filter CHECK (
        filter <> ''
        AND octet_length(filter) <= 65535
        AND filter ~ '^(#|(\+|[^/+#]*)(/(\+|[^/+#]*))*(/#)?)$'
    )
);

-- `+` matches one level (an empty one too), `a/#` matches `a` and everything under it,
-- and a filter starting with a wildcard does not match a topic starting with `$`.
-- LIKE specials (`%`, `_`, `\`) in a level are escaped; in the regex every character that
-- is not a letter or digit is escaped (`\` + any such character is that character).
CREATE OR REPLACE FUNCTION jobpub_pause_match() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    level text;
    deep boolean := NEW.filter = '#' OR NEW.filter LIKE '%/#';
    like_levels text[] := '{}';
    regex_levels text[] := '{}';
BEGIN
    FOREACH level IN ARRAY string_to_array(NEW.filter, '/') LOOP
        CONTINUE WHEN level = '#';
        IF level = '+' THEN
            like_levels := like_levels || '%'::text;
            regex_levels := regex_levels || '[^/]*'::text;
        ELSE
            like_levels := like_levels || regexp_replace(level, '([\\%_])', '\\\1', 'g');
            regex_levels := regex_levels || regexp_replace(level, '([^[:alnum:]])', '\\\1', 'g');
        END IF;
    END LOOP;
    NEW.first_level := CASE WHEN left(NEW.filter, 1) IN ('+', '#') THEN NULL
                            ELSE split_part(NEW.filter, '/', 1) END;
    NEW.topic_like := array_to_string(like_levels, '/') || CASE WHEN deep THEN '%' ELSE '' END;
    NEW.topic_regex := '^'
        || CASE WHEN left(NEW.filter, 1) IN ('+', '#') THEN '(?!\$)' ELSE '' END
        || CASE WHEN NEW.filter = '#' THEN '.*'
                ELSE array_to_string(regex_levels, '/')
                     || CASE WHEN deep THEN '(/.*)?' ELSE '' END
           END
        || '$';
    RETURN NEW;
END
$$;

CREATE INDEX IF NOT EXISTS pauses_first_level_idx ON pauses (first_level);

CREATE OR REPLACE TRIGGER pauses_match
    BEFORE INSERT OR UPDATE ON pauses
    FOR EACH ROW EXECUTE FUNCTION jobpub_pause_match();

-- A resume (or any change) wakes every replica at once: paused rows that are due go out
-- without waiting for the poll interval. A pause needs no wake-up: the next claim sees it.
CREATE OR REPLACE FUNCTION jobpub_pauses_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobpub_jobs', '');
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER pauses_changed
    AFTER INSERT OR UPDATE OR DELETE ON pauses
    FOR EACH STATEMENT EXECUTE FUNCTION jobpub_pauses_changed();

DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'jobpub_daemon') THEN
        GRANT SELECT ON pauses TO jobpub_daemon;
    END IF;
END
$$;
