-- jobpub schema, version 4: lanes for claims under a backlog (jobpub.queries,
-- CLAIM_DUE_JOBS_IN_LANE). Pending rows ordered by lane (id % 16), then as the claim
-- takes them, so concurrent claims can each start at the head of a different lane
-- instead of all stepping over the rows the others hold. The 16 here and in the claim
-- must agree.
CREATE INDEX IF NOT EXISTS jobs_pending_lane_idx
    ON jobs ((id % 16), fire_at, id)
    WHERE NOT processed AND failed_at IS NULL;
