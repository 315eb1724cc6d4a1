"""Every SQL statement jobpub runs, named, with why it is shaped the way it is.

`%%` is a literal `%`: psycopg reads `%(name)s` as a parameter.
"""

from typing import Final, LiteralString

# Three predicates recur below and must agree with the indexes of sql/; they are
# written out whole in each statement, and tests/integration/test_schema_and_claim.py
# checks each statement holds them verbatim and the indexes match (pg_indexes).
# Pending: exactly the predicate of the partial indexes jobs_pending_fire_at_idx and
# jobs_pending_lane_idx, so the planner can use them.
PENDING: Final[LiteralString] = "NOT processed AND failed_at IS NULL"
# A replica's own share under a static partition (JOBPUB_CONSUMER_COUNT > 1).
OWN_PARTITION: Final[LiteralString] = (
    "(%(consumer_count)s::int = 1\n"
    "       OR id %% %(consumer_count)s::int = %(consumer_index)s::int"
)
# Lanes: jobs_pending_lane_idx (sql/0004_claim_lanes.sql) is on (id % 16); LANES and
# the 16 in CLAIM_DUE_JOBS_IN_LANE must equal it.
LANES: Final = 16
# Not paused: no row of `pauses` (sql/0014_pauses.sql) matches the topic. Read by the claim
# itself, so a pause holds from the first claim after its commit, with no cache to go
# stale. Per row: one probe of a hash of the filters' first levels, built once per
# statement (`hashed SubPlan`); only a topic whose first level is paused looks further, by
# index, at the filters with that first level; then the few filters starting with a
# wildcard. So the cost does not grow with the number of filters: a 250-row claim ran
# 0.21 ms with no predicate, 0.39 ms with it and 0 filters, 0.41 ms with 100 (server time,
# PG 15; an index probe per row instead: 0.63 ms; every filter tested per row: +1.4 ms).
# The LIKE test is cheap; the exact regex runs only on what passes it.
NOT_PAUSED: Final[LiteralString] = """\
(split_part(jobs.topic, '/', 1) NOT IN (SELECT first_level FROM pauses
                                                      WHERE first_level IS NOT NULL)
                   OR NOT EXISTS (SELECT 1 FROM pauses
                                  WHERE pauses.first_level = split_part(jobs.topic, '/', 1)
                                    AND jobs.topic LIKE pauses.topic_like
                                    AND jobs.topic ~ pauses.topic_regex))
              AND NOT EXISTS (SELECT 1 FROM pauses
                              WHERE pauses.first_level IS NULL
                                AND jobs.topic LIKE pauses.topic_like
                                AND jobs.topic ~ pauses.topic_regex)"""

# Claim up to `limit` due rows in one statement. A plain SELECT … FOR UPDATE SKIP
# LOCKED under LIMIT locks exactly the rows it returns (LockRows sits below Limit),
# so the MATERIALIZED CTE fence that an `UPDATE … WHERE id IN (SELECT … LIMIT)` needs
# is unnecessary here, and claiming makes no new row version (the lock is recorded in
# the row's header): the row's one update is the mark, which halves the dead tuples a
# queue table makes. The locks live as long as the transaction that publishes the
# batch; a replica that dies releases them with its connection. Due is judged by the
# database clock; `lookahead` lets the replica hold rows due very soon and publish each
# at its own time. `due_in` is fire_at - now() in seconds; an infinite fire_at left from
# before the constraint (`-infinity` is due; `infinity` never is) counts as due now,
# since PostgreSQL cannot subtract it.
# Bounded in bytes as well as rows, without loading what it refuses: octet_length reads
# a TOASTed value's size from its header, and the locking subquery passes payloads on as
# TOAST pointers, so a payload is read only when the outer CASE returns it. `refusal`
# names why a row cannot be published (NULL for the rows to publish): a NULL topic or
# payload (an adopted table may allow them; refused here, not at INSERT) or a payload
# over `max_payload_bytes`; the Completer marks those dead. `held`: a row that starts
# past `batch_max_bytes` in claim order (so a claim reads at most one row beyond it, and
# always its first); it stays locked, untouched and unread, until the batch ends, and
# the next claim takes it. The running sum and the result keep the order the locking
# subquery returns rows in (its index's): an ORDER BY above it would add a sort, since
# the planner does not trust LockRows' output to stay ordered.
# Expiry: `expires_in` is expires_at - now() in seconds (NULL: none; 0: passed), which
# the Claimer turns into a deadline for the publisher (Message Expiry Interval). A row
# whose expiry has passed is `expired`: returned unread like a refused row, not counted
# in the bound, and marked expired (MARK_EXPIRED). A binary row's payload is
# payload_bytes; the payload limit and the byte bound count whichever is published, and
# the bound counts the MQTT 5 properties too; `send` says which rows come back read.
# The oldest due rows of all. Rows outside this replica's static partition are taken
# too once overdue by `takeover_delay`, so a dead partner's share still fires.
CLAIM_DUE_JOBS: Final[LiteralString] = """
SELECT id, topic,
       CASE WHEN send THEN payload::text END AS payload,
       qos, retain, due_in, version,
       CASE WHEN send THEN payload_bytes END AS payload_bytes,
       CASE WHEN send THEN content_type END AS content_type,
       CASE WHEN send THEN user_properties END AS user_properties,
       CASE WHEN send THEN response_topic END AS response_topic,
       CASE WHEN send THEN correlation_data END AS correlation_data,
       expires_in, expired, refusal,
       refusal IS NULL AND NOT expired AND NOT send AS held
FROM (
    SELECT budgeted.*,
           refusal IS NULL AND NOT expired
               AND running - size < %(batch_max_bytes)s::bigint AS send
    FROM (
        SELECT claimed.*,
               sum(CASE WHEN refusal IS NULL AND NOT expired THEN size ELSE 0 END)
                   OVER (ROWS UNBOUNDED PRECEDING) AS running
        FROM (
            SELECT id, topic, payload, payload_bytes, qos, retain, fire_at, content_type,
                   user_properties, response_topic, correlation_data,
                   CASE WHEN isfinite(fire_at)
                        THEN extract(epoch FROM fire_at - now())::float8 ELSE 0 END AS due_in,
                   xmin::text AS version,
                   CASE WHEN expires_at <= now() THEN 0
                        WHEN isfinite(expires_at)
                        THEN extract(epoch FROM expires_at - now())::float8 END AS expires_in,
                   coalesce(expires_at <= now(), false) AS expired,
                   octet_length(topic)
                       + coalesce(octet_length(payload_bytes), octet_length(payload))
                       + coalesce(octet_length(content_type), 0)
                       + coalesce(pg_column_size(user_properties), 0)
                       + coalesce(octet_length(response_topic), 0)
                       + coalesce(octet_length(correlation_data), 0) AS size,
                   CASE WHEN topic IS NULL THEN 'topic is NULL'
                        WHEN payload IS NULL AND payload_bytes IS NULL THEN 'payload is NULL'
                        WHEN coalesce(octet_length(payload_bytes), octet_length(payload))
                             > %(max_payload_bytes)s::bigint
                        THEN 'payload is '
                             || coalesce(octet_length(payload_bytes), octet_length(payload))::text
                             || ' bytes, over JOBPUB_MAX_PAYLOAD_BYTES ('
                             || %(max_payload_bytes)s::bigint::text || ')'
                   END AS refusal
            FROM jobs
            WHERE NOT processed AND failed_at IS NULL
              AND fire_at <= now() + make_interval(secs => %(lookahead)s)
              AND (next_attempt_at IS NULL OR next_attempt_at <= now())
              AND (%(consumer_count)s::int = 1
       OR id %% %(consumer_count)s::int = %(consumer_index)s::int
                   OR fire_at <= now() - make_interval(secs => %(takeover_delay)s))
              AND (split_part(jobs.topic, '/', 1) NOT IN (SELECT first_level FROM pauses
                                                      WHERE first_level IS NOT NULL)
                   OR NOT EXISTS (SELECT 1 FROM pauses
                                  WHERE pauses.first_level = split_part(jobs.topic, '/', 1)
                                    AND jobs.topic LIKE pauses.topic_like
                                    AND jobs.topic ~ pauses.topic_regex))
              AND NOT EXISTS (SELECT 1 FROM pauses
                              WHERE pauses.first_level IS NULL
                                AND jobs.topic LIKE pauses.topic_like
                                AND jobs.topic ~ pauses.topic_regex)
            ORDER BY fire_at, id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) AS claimed
    ) AS budgeted
) AS judged
"""

# Under a backlog, claims that all start at the head of jobs_pending_fire_at_idx step
# over every row the others hold locked, a heap visit and a lock attempt each: with 4
# replicas with 2 batches each in flight, 7 rows skipped per row claimed, over a third
# of PostgreSQL's CPU in a DB-only drain with 8 claims in flight (measured).
# jobs_pending_lane_idx splits pending rows into LANES lanes by id, so a claim under a
# backlog takes the oldest due rows of one lane, and claims in flight at once mostly
# hold different lanes. Order holds within a lane; across lanes it may differ by a few
# batches. The same columns, refusals, byte bound and due predicate as CLAIM_DUE_JOBS:
# never early. Used only without a static partition, so there is no partition predicate.
CLAIM_DUE_JOBS_IN_LANE: Final[LiteralString] = """
SELECT id, topic,
       CASE WHEN send THEN payload::text END AS payload,
       qos, retain, due_in, version,
       CASE WHEN send THEN payload_bytes END AS payload_bytes,
       CASE WHEN send THEN content_type END AS content_type,
       CASE WHEN send THEN user_properties END AS user_properties,
       CASE WHEN send THEN response_topic END AS response_topic,
       CASE WHEN send THEN correlation_data END AS correlation_data,
       expires_in, expired, refusal,
       refusal IS NULL AND NOT expired AND NOT send AS held
FROM (
    SELECT budgeted.*,
           refusal IS NULL AND NOT expired
               AND running - size < %(batch_max_bytes)s::bigint AS send
    FROM (
        SELECT claimed.*,
               sum(CASE WHEN refusal IS NULL AND NOT expired THEN size ELSE 0 END)
                   OVER (ROWS UNBOUNDED PRECEDING) AS running
        FROM (
            SELECT id, topic, payload, payload_bytes, qos, retain, fire_at, content_type,
                   user_properties, response_topic, correlation_data,
                   CASE WHEN isfinite(fire_at)
                        THEN extract(epoch FROM fire_at - now())::float8 ELSE 0 END AS due_in,
                   xmin::text AS version,
                   CASE WHEN expires_at <= now() THEN 0
                        WHEN isfinite(expires_at)
                        THEN extract(epoch FROM expires_at - now())::float8 END AS expires_in,
                   coalesce(expires_at <= now(), false) AS expired,
                   octet_length(topic)
                       + coalesce(octet_length(payload_bytes), octet_length(payload))
                       + coalesce(octet_length(content_type), 0)
                       + coalesce(pg_column_size(user_properties), 0)
                       + coalesce(octet_length(response_topic), 0)
                       + coalesce(octet_length(correlation_data), 0) AS size,
                   CASE WHEN topic IS NULL THEN 'topic is NULL'
                        WHEN payload IS NULL AND payload_bytes IS NULL THEN 'payload is NULL'
                        WHEN coalesce(octet_length(payload_bytes), octet_length(payload))
                             > %(max_payload_bytes)s::bigint
                        THEN 'payload is '
                             || coalesce(octet_length(payload_bytes), octet_length(payload))::text
                             || ' bytes, over JOBPUB_MAX_PAYLOAD_BYTES ('
                             || %(max_payload_bytes)s::bigint::text || ')'
                   END AS refusal
            FROM jobs
            WHERE NOT processed AND failed_at IS NULL
              AND fire_at <= now() + make_interval(secs => %(lookahead)s)
              AND (next_attempt_at IS NULL OR next_attempt_at <= now())
              AND id %% 16 = %(lane)s::bigint
              AND (split_part(jobs.topic, '/', 1) NOT IN (SELECT first_level FROM pauses
                                                      WHERE first_level IS NOT NULL)
                   OR NOT EXISTS (SELECT 1 FROM pauses
                                  WHERE pauses.first_level = split_part(jobs.topic, '/', 1)
                                    AND jobs.topic LIKE pauses.topic_like
                                    AND jobs.topic ~ pauses.topic_regex))
              AND NOT EXISTS (SELECT 1 FROM pauses
                              WHERE pauses.first_level IS NULL
                                AND jobs.topic LIKE pauses.topic_like
                                AND jobs.topic ~ pauses.topic_regex)
            ORDER BY fire_at, id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        ) AS claimed
    ) AS budgeted
) AS judged
"""

# Run first in every claim's transaction. A claim wants one plan only: walk its partial
# index (jobs_pending_fire_at_idx, or jobs_pending_lane_idx) in order and stop after
# `limit` rows. When statistics are stale
# (a bulk INSERT into a queue that autoanalyze last saw empty, or kept small by retention
# DELETEs) the planner expects a handful of rows and instead gathers every due row and
# sorts them: 117 ms on disk instead of 1.5 ms for 100,000 due rows (measured, PG 15).
# Forbidding the sort leaves the ordered index walk. SET LOCAL ends with the transaction,
# so it is safe behind PgBouncer's transaction pooling.
CLAIM_PLAN: Final[LiteralString] = "SET LOCAL enable_sort = off"

# Seconds until this replica should look again: the earliest pending row beyond the
# lookahead in its partition, or the end of the earliest retry backoff. NULL when
# nothing is scheduled; an `infinity` fire_at never is. Each half reads the first entry
# of its partial index: ORDER BY … LIMIT 1 under CLAIM_PLAN, not min(), which with
# statistics from before a bulk insert read every scheduled row's entry instead (60,000
# rows: 14-28 ms per claim against 0.05 ms, measured, PG 15).
NEXT_WAKE: Final[LiteralString] = """
SELECT extract(epoch FROM least(
    (SELECT fire_at FROM jobs
     WHERE NOT processed AND failed_at IS NULL
       AND fire_at > now() + make_interval(secs => %(lookahead)s)
       AND fire_at < 'infinity'
       AND (%(consumer_count)s::int = 1
       OR id %% %(consumer_count)s::int = %(consumer_index)s::int)
     ORDER BY fire_at LIMIT 1),
    (SELECT next_attempt_at FROM jobs
     WHERE NOT processed AND failed_at IS NULL AND next_attempt_at > now()
     ORDER BY next_attempt_at LIMIT 1)
) - now())::float8
"""

# clock_timestamp(), not now(): now() is the transaction's start, the claim, which for
# a row held until its fire_at would be earlier than the publish.
# Every mark writes `state` itself (sql/0010: the state trigger then does nothing).
MARK_PUBLISHED: Final[LiteralString] = """
UPDATE jobs SET processed = true, processed_at = clock_timestamp(), state = 'published'
WHERE id = ANY(%(ids)s::bigint[])
"""

# The claiming transaction died (its connection was lost) after the broker acked these
# rows: mark them on a new connection so they are not published again. Skip a row
# another replica holds now (it will publish it again anyway) or that changed since the
# claim (a new xmin: rescheduled, or already marked by someone else).
MARK_PUBLISHED_AFTER_LOSS: Final[LiteralString] = """
UPDATE jobs SET processed = true, processed_at = clock_timestamp(), state = 'published'
WHERE id IN (
    SELECT jobs.id
    FROM jobs
    JOIN unnest(%(ids)s::bigint[], %(versions)s::text[]) AS claimed(id, version)
      ON jobs.id = claimed.id AND jobs.xmin::text = claimed.version
    WHERE NOT jobs.processed AND jobs.failed_at IS NULL
    FOR UPDATE OF jobs SKIP LOCKED
)
"""

# Rows that can never be published: dead at once, with the reason.
MARK_DEAD: Final[LiteralString] = """
UPDATE jobs
SET attempts = jobs.attempts + 1, last_error = refused.error, failed_at = clock_timestamp(),
    state = 'dead'
FROM unnest(%(ids)s::bigint[], %(errors)s::text[]) AS refused(id, error)
WHERE jobs.id = refused.id
"""

# A failed attempt: count it and wait out an exponential backoff with jitter, or go
# dead when the attempts are used up. One statement for the whole batch. The exponent
# stops at 62: 2 ^ 1024 overflows a double and would fail the batch's settle, and the
# cap (backoff_max) applies long before. RetryPolicy mirrors this arithmetic.
MARK_RETRY: Final[LiteralString] = """
UPDATE jobs
SET attempts = jobs.attempts + 1,
    last_error = failed.error,
    next_attempt_at = clock_timestamp() + make_interval(secs =>
        least(%(backoff_max)s, %(backoff)s * 2 ^ least(jobs.attempts, 62))
        * (0.5 + random() / 2)),
    failed_at = CASE WHEN jobs.attempts + 1 >= %(max_attempts)s THEN clock_timestamp() END,
    state = CASE WHEN jobs.attempts + 1 >= %(max_attempts)s THEN 'dead' ELSE 'pending' END
FROM unnest(%(ids)s::bigint[], %(errors)s::text[]) AS failed(id, error)
WHERE jobs.id = failed.id
RETURNING jobs.failed_at IS NOT NULL AS dead
"""

# Rows whose expiry passed before they were published: they leave the queue as
# processed (retention prunes them with published rows) with expired_at and the reason.
# Also the Completer's statement for rows the claim found expired or the publisher found
# expired while holding them for their fire_at.
MARK_EXPIRED: Final[LiteralString] = """
UPDATE jobs
SET processed = true, processed_at = clock_timestamp(), expired_at = clock_timestamp(),
    state = 'expired',
    last_error = 'expired: expires_at ' || expires_at::text || ' passed before it was published'
WHERE id = ANY(%(ids)s::bigint[])
"""

# Expire pending rows the claim never takes: paused ones, and rows whose expiry comes
# before their fire_at. Reads jobs_expires_at_pending_idx (sql/0011) from its head, so an
# empty sweep is one index probe. SKIP LOCKED: a row a replica holds now is judged by its
# publisher at send. The MATERIALIZED CTE locks exactly `limit` rows before the UPDATE.
EXPIRE_OVERDUE: Final[LiteralString] = """
WITH overdue AS MATERIALIZED (
    SELECT id FROM jobs
    WHERE NOT processed AND failed_at IS NULL AND expires_at IS NOT NULL
      AND expires_at <= now()
    ORDER BY expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE jobs
SET processed = true, processed_at = clock_timestamp(), expired_at = clock_timestamp(),
    state = 'expired',
    last_error = 'expired: expires_at ' || expires_at::text || ' passed before it was published'
FROM overdue
WHERE jobs.id = overdue.id
"""

# Backlog gauges. A count over the partial index: cheap while the backlog is modest,
# and sampled every few seconds rather than per scrape.
BACKLOG: Final[LiteralString] = """
SELECT count(*) FILTER (WHERE fire_at <= now()) AS due,
       count(*) FILTER (WHERE fire_at > now()) AS scheduled,
       (SELECT count(*) FROM jobs WHERE failed_at IS NOT NULL AND NOT processed) AS dead
FROM jobs
WHERE NOT processed AND failed_at IS NULL
"""

LISTEN: Final[LiteralString] = "LISTEN jobpub_jobs"

# Is the database there? Asked after connections were lost, before claiming again.
PING: Final[LiteralString] = "SELECT 1"

# Limits on every pooled session, set once per connection (jobpub.db.database). The idle
# timeout ends a transaction left open by a frozen replica (SIGSTOP, a paused VM, a
# partition) so the server frees its claimed rows; the statement timeout bounds a stuck
# statement, a lock wait included, which is why no lock_timeout is set apart; the
# server's keepalives and TCP user timeout drop a silent client's socket. set_config,
# not SET, because SET takes no parameters; session-wide (false), not per transaction.
SESSION_LIMITS: Final[LiteralString] = """
SELECT set_config('idle_in_transaction_session_timeout', %(hold_timeout_ms)s, false),
       set_config('statement_timeout', %(hold_timeout_ms)s, false),
       set_config('tcp_keepalives_idle', %(keepalives_idle)s, false),
       set_config('tcp_keepalives_interval', %(keepalives_interval)s, false),
       set_config('tcp_keepalives_count', %(keepalives_count)s, false),
       set_config('tcp_user_timeout', %(tcp_user_timeout_ms)s, false)
"""

# Migrations. One advisory lock serialises `jobpub migrate` runs that start together. A
# transaction's lock, held by a transaction of its own for the whole run: a session lock
# would stay on whichever server connection PgBouncer's transaction pooling lent and
# serialise nothing. Tried, not waited for: a waiting statement holds a snapshot, and the
# concurrent index build of the run that holds the lock would wait for that snapshot,
# a deadlock through the client that no server can see.
TRY_MIGRATION_LOCK: Final[LiteralString] = "SELECT pg_try_advisory_xact_lock(7201203841)"
# The lock's transaction is idle for the whole run by design: no idle timeout ends it.
KEEP_MIGRATION_LOCK_IDLE: Final[LiteralString] = "SET LOCAL idle_in_transaction_session_timeout = 0"
# The server's pid, the same for as long as a transaction stays open (PgBouncer shows
# clients a pid of its own).
BACKEND_PID: Final[LiteralString] = "SELECT pg_backend_pid()"
# A migration's table lock queued behind a long transaction would hold every INSERT that
# comes after it: each attempt waits this long at most, then is retried. set_config(…,
# true) is SET LOCAL with a parameter; it ends with the transaction (pooling-safe).
LIMIT_LOCK_WAIT: Final[LiteralString] = "SELECT set_config('lock_timeout', %(timeout)s, true)"
# Why a migration could not take its locks: the oldest open transaction in this database
# other than the run's own lock holder, for the message when migrate gives up.
OLDEST_TRANSACTION: Final[LiteralString] = """
SELECT pid, state, extract(epoch FROM now() - xact_start)::int AS age_s, left(query, 200)
FROM pg_stat_activity
WHERE datname = current_database() AND xact_start IS NOT NULL
  AND pid <> pg_backend_pid() AND pid <> %(lock_holder)s::int
ORDER BY xact_start
LIMIT 1
"""
# A failed CREATE INDEX CONCURRENTLY leaves its index INVALID, and IF NOT EXISTS would then
# skip it for good. Under the migration lock no other build is running: drop and rebuild.
INDEX_IS_INVALID: Final[LiteralString] = (
    "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(%(name)s)"
)
# An identifier cannot be a parameter: the index name is quoted by psycopg (sql.Identifier).
DROP_INDEX_CONCURRENTLY: Final[LiteralString] = "DROP INDEX CONCURRENTLY IF EXISTS {index}"
CREATE_MIGRATIONS_TABLE: Final[LiteralString] = """
CREATE TABLE IF NOT EXISTS jobpub_migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
APPLIED_MIGRATIONS: Final[LiteralString] = "SELECT version FROM jobpub_migrations"
RECORD_MIGRATION: Final[LiteralString] = (
    "INSERT INTO jobpub_migrations (version, name) VALUES (%(version)s, %(name)s)"
)

# Put dead rows back in the queue (operator command). attempts restart from zero;
# last_error stays as history. Expired rows are processed, so never taken: requeued they
# would expire again (docs/jobs.md says how to give one a new expiry). NOTIFY wakes the
# replicas at once.
REQUEUE_DEAD: Final[LiteralString] = """
UPDATE jobs SET failed_at = NULL, attempts = 0, next_attempt_at = NULL, state = 'pending'
WHERE failed_at IS NOT NULL AND NOT processed
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
RETURNING id
"""
NOTIFY_REQUEUED: Final[LiteralString] = "SELECT pg_notify('jobpub_jobs', '')"

# A batch held rows past its byte bound (CLAIM_DUE_JOBS): they are free once it commits,
# and due. Sent in its transaction, so delivered at the commit: every replica claims.
NOTIFY_HELD_ROWS: Final[LiteralString] = "SELECT pg_notify('jobpub_jobs', '')"
# Retention (jobpub.db.retention). One batch per statement, each its own transaction
# (autocommit), so the advisory lock lasts exactly one batch: two replicas never prune at
# once, none waits for the other (a busy lock gives NULL, not a wait), and behind
# PgBouncer's transaction pooling the lock ends where it began. The DELETE itself sits in
# a SECURITY DEFINER function of sql/0009_retention.sql: the daemon's role may not DELETE.
# `behind`: due rows overdue by more than `grace` seconds (a backlog: the fleet is
# behind) and the batch is not run; pruning is deferrable work, publishing is not (it
# took a third off a drain on 2 cores, measured). The probe reads the head of
# jobs_pending_fire_at_idx; rows waiting out a retry backoff are not a backlog.
# The cutoff is judged by the database clock, as due is. `retention` is in seconds.
PRUNE_PUBLISHED_BATCH: Final[LiteralString] = """
SELECT behind,
       CASE WHEN NOT behind AND pg_try_advisory_xact_lock(7201203842)
            THEN jobpub_prune_published(now() - make_interval(secs => %(retention)s),
                                        %(batch_size)s::int)
       END
FROM (SELECT EXISTS (
          SELECT FROM jobs
          WHERE NOT processed AND failed_at IS NULL
            AND fire_at < now() - make_interval(secs => %(grace)s)
            AND (next_attempt_at IS NULL OR next_attempt_at <= now())) AS behind) AS backlog
"""
# The same for dead rows, under the same lock and the same deference.
PRUNE_DEAD_BATCH: Final[LiteralString] = """
SELECT behind,
       CASE WHEN NOT behind AND pg_try_advisory_xact_lock(7201203842)
            THEN jobpub_prune_dead(now() - make_interval(secs => %(retention)s),
                                   %(batch_size)s::int)
       END
FROM (SELECT EXISTS (
          SELECT FROM jobs
          WHERE NOT processed AND failed_at IS NULL
            AND fire_at < now() - make_interval(secs => %(grace)s)
            AND (next_attempt_at IS NULL OR next_attempt_at <= now())) AS behind) AS backlog
"""

# Register this replica or refresh its heartbeat, drop replicas silent for `stale_after`
# seconds, and count the live ones (this one included) for the fleet-wide rate limit's
# share. One statement, one round trip every heartbeat. An upsert, so a replica removed as
# stale (frozen past stale_after) registers again on its next beat. The count reads the
# snapshot from before this statement's own writes: `+ 1` is this replica, and the stale
# rows are left out by the same bound the DELETE uses.
BEAT_REPLICA: Final[LiteralString] = """
WITH beat AS (
    INSERT INTO jobpub_replicas (id, host, version, partition)
    VALUES (%(id)s, %(host)s, %(version)s, %(partition)s)
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()
    RETURNING id
), stale AS (
    DELETE FROM jobpub_replicas
    WHERE heartbeat_at < now() - make_interval(secs => %(stale_after)s)
      AND id <> %(id)s
    RETURNING id
)
SELECT 1 + count(*)
FROM jobpub_replicas
WHERE id <> %(id)s AND heartbeat_at >= now() - make_interval(secs => %(stale_after)s)
"""

# A clean stop: the others' shares grow at their next heartbeat.
REMOVE_REPLICA: Final[LiteralString] = "DELETE FROM jobpub_replicas WHERE id = %(id)s"

# Pause a topic filter (operator command). An existing pause keeps its age; a new reason
# replaces the old one. The table's trigger checks the filter and computes its match.
PAUSE: Final[LiteralString] = """
INSERT INTO pauses (filter, reason) VALUES (%(filter)s, %(reason)s)
ON CONFLICT (filter) DO UPDATE SET reason = coalesce(EXCLUDED.reason, pauses.reason)
RETURNING created_at = now() AS created
"""

# Resume: the table's statement trigger NOTIFYs every replica to claim at once.
RESUME: Final[LiteralString] = "DELETE FROM pauses WHERE filter = %(filter)s RETURNING filter"

# The pauses, oldest first. Few rows: no index wanted.
LIST_PAUSES: Final[LiteralString] = """
SELECT filter, extract(epoch FROM now() - created_at)::float8 AS age_s, reason
FROM pauses
ORDER BY created_at, filter
"""

# `jobpub migrate` with JOBPUB_PROBE_TOPIC set, as the owner (sql/0015_delivery_probes.sql).
ALLOW_PROBE_TOPIC: Final[LiteralString] = "SELECT jobpub_allow_probe_topic(%(topic)s)"
