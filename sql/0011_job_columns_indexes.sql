-- jobpub:no-transaction
-- jobpub schema, version 11: what version 10 left to statements that must not hold a
-- table lock. Outside a transaction, each statement on its own and safe to run again.

-- Rows that were pending or dead before version 10 read its catalog default 'published'
-- until this statement: it writes their state (row locks only, so producers' INSERTs go
-- on; due rows among them are claimed once it commits). It touches only unsettled rows,
-- the queue, not the processed rows a kept table is mostly made of.
UPDATE jobs
SET state = jobpub_job_state(processed, failed_at, expired_at)
WHERE NOT processed AND state = 'published';

-- The arbiter of `INSERT … ON CONFLICT (dedupe_key) DO NOTHING`: a unique index on the
-- column alone, not partial, since ON CONFLICT (dedupe_key) infers only such an index.
-- NULLs never conflict, so rows without a key are unaffected. A key is taken while its
-- row is kept: retention frees it.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS jobs_dedupe_key_idx
    ON jobs (dedupe_key);

-- Serves the expiry sweep (queries.EXPIRE_OVERDUE): pending rows with an expiry, in
-- expiry order, whether due, paused or scheduled ahead. Partial: rows without an expiry
-- and settled rows have no entry.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_expires_at_pending_idx
    ON jobs (expires_at)
    WHERE NOT processed AND failed_at IS NULL AND expires_at IS NOT NULL;
