-- jobpub:no-transaction
-- jobpub schema, version 16: the indexes `jobpub web` pages its job lists through
-- (jobpub.db.web, keyset on (fire_at, id)). Without them the first page of a 10M-row
-- table sorted every row: 5.5 s for all jobs, 0.8 s for the dead ones (PG 15, measured).
-- Built CONCURRENTLY, outside a transaction, so producers' INSERTs and the replicas'
-- marks go on during the build; each statement is safe to run again (IF NOT EXISTS, and
-- `jobpub migrate` rebuilds an index a failed build left INVALID).

-- Every row in list order: the list of all jobs, of published ones (most of a kept
-- table) and a topic's, and any page deep into them, each read `limit + 1` entries
-- and rows on. Not partial: it must hold the settled rows. Its cost is one more index
-- entry per INSERT and per mark (which is never a HOT update anyway); measured within
-- the drain's noise, docs/performance.md.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_fire_at_idx
    ON jobs (fire_at, id);

-- Dead rows in list order: few, scattered over the whole table, written only when a job
-- fails, so nothing on the publish path pays for it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_dead_fire_at_idx
    ON jobs (fire_at, id)
    WHERE failed_at IS NOT NULL AND NOT processed;
