-- jobpub:no-transaction
-- jobpub schema, version 16: the indexes `jobpub web` pages its job lists through
-- (jobpub.db.web, keyset on (fire_at, id)). Without them the first page of a 10M-row
-- table sorted every row: 5.5 s for all jobs, 0.8 s for the dead ones (PG 15, measured).
-- Built CONCURRENTLY, outside a transaction, so producers' INSERTs and the replicas'
-- marks go on during the build; each statement is safe to run again (IF NOT EXISTS, and
-- `jobpub migrate` rebuilds an index a failed build left INVALID).

-- Settled rows (published, expired, dead) in list order; pending ones are in the claim's
-- index already. Partial on the claim's opposite, so the claim can never take it: an
-- index of every row in (fire_at, id) order was its pick on a mostly pending table (a
-- tie with its own), and then each claim walked the rows marked before it. An INSERT
-- adds no entry; a mark adds one (never a HOT update anyway: it changes the pending
-- indexes' predicate), measured in docs/performance.md.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_settled_fire_at_idx
    ON jobs (fire_at, id)
    WHERE processed OR failed_at IS NOT NULL;

-- Dead rows in list order: few, scattered over the whole table, written only when a job
-- fails, so nothing on the publish path pays for it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_dead_fire_at_idx
    ON jobs (fire_at, id)
    WHERE failed_at IS NOT NULL AND NOT processed;
