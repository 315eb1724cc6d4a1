-- jobpub:no-transaction
-- jobpub schema, version 4: the claim's indexes, built CONCURRENTLY so producers' INSERTs
-- go on during the build (an adopted table may be large and live). Outside a transaction,
-- so each statement must be safe to run again: IF NOT EXISTS, and `jobpub migrate` drops
-- and rebuilds an index a failed build left INVALID. Databases migrated before this file
-- took this form got the first two in version 1; IF NOT EXISTS keeps them.

-- Serves the claim: pending rows in fire_at order. Partial, so it holds only pending
-- rows and stays small however many processed rows are kept.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_pending_fire_at_idx
    ON jobs (fire_at, id)
    WHERE NOT processed AND failed_at IS NULL;

-- Serves the next-wake lookup for rows waiting out a retry backoff (few rows).
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_retry_at_idx
    ON jobs (next_attempt_at)
    WHERE NOT processed AND failed_at IS NULL AND next_attempt_at IS NOT NULL;

-- Lanes for claims under a backlog (jobpub.db.queries, CLAIM_DUE_JOBS_IN_LANE). Pending
-- rows ordered by lane (id % 16), then as the claim takes them, so concurrent claims can
-- each start at the head of a different lane instead of all stepping over the rows the
-- others hold. The 16 here and in the claim must agree.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_pending_lane_idx
    ON jobs ((id % 16), fire_at, id)
    WHERE NOT processed AND failed_at IS NULL;
