-- Runs once, when the compose stack's database is first created (before `jobpub migrate`).
-- Publishers log in as jobpub_publisher, a member of jobpub_daemon; migration 0002 grants
-- jobpub_daemon only what `jobpub run` needs. The password is PUBLISHER_DB_PASSWORD from
-- the environment (.env): psql's \getenv reads it and :'…' quotes it as a literal, so no
-- secret is written here.
\getenv publisher_password PUBLISHER_DB_PASSWORD
\if :{?publisher_password}
\else
    DO $$ BEGIN RAISE EXCEPTION 'PUBLISHER_DB_PASSWORD is not set'; END $$;
\endif
CREATE ROLE jobpub_daemon NOLOGIN;
CREATE ROLE jobpub_publisher LOGIN PASSWORD :'publisher_password' IN ROLE jobpub_daemon;
