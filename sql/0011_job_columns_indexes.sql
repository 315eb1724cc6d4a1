-- jobpub:no-transaction
-- jobpub schema, version 11: what version 10 left to statements that must not hold a
-- table lock. Outside a transaction, each statement on its own and safe to run again.

-- Rows that were pending or dead before version 10 read its catalog default 'published'
-- until these statements write their state, under row locks only (producers' INSERTs go
-- on), touching only unsettled rows, not the processed rows a kept table is mostly made
-- of. Pending rows first, found through the claim's partial index: due ones among them
-- wait for this commit, which comes in time proportional to the queue (10,000 pending
-- rows spread over a 1M-row table: 1.8 s on the loaded 2-core development machine).
-- Dead rows are never claimed: a scan that locks them holds nothing up.
UPDATE jobs SET state = 'pending'
WHERE NOT processed AND failed_at IS NULL AND state = 'published';
UPDATE jobs SET state = 'dead'
WHERE failed_at IS NOT NULL AND NOT processed AND state = 'published';

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
