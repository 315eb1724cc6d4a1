-- jobpub:no-transaction
-- jobpub schema, version 8: one jobs row per schedule occurrence. Unique and partial, so
-- one-off rows (schedule_name NULL) are not in it; the materialiser's INSERT … ON
-- CONFLICT names it, and the change trigger of version 7 finds a schedule's pending rows
-- through it. Built CONCURRENTLY: the jobs table may be large and live.
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS jobs_schedule_occurrence_idx
    ON jobs (schedule_name, occurrence_at)
    WHERE schedule_name IS NOT NULL;
