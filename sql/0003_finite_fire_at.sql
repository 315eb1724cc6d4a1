-- jobpub schema, version 3: refuse `infinity` and `-infinity` as fire_at. Neither is a
-- time a job can fire at, and PostgreSQL cannot subtract them from now(). NOT VALID as in
-- version 1: rows already there are not re-checked; the claim copes with them.
ALTER TABLE jobs
    ADD CONSTRAINT jobs_fire_at_finite CHECK (isfinite(fire_at)) NOT VALID;
