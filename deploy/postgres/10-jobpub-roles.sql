-- Runs once, when the compose stack's database is first created (before `jobpub migrate`).
-- Publishers log in as jobpub_publisher, a member of jobpub_daemon; migration 0002 grants
-- jobpub_daemon only what `jobpub run` needs. Change the password for anything real.
CREATE ROLE jobpub_daemon NOLOGIN;
CREATE ROLE jobpub_publisher LOGIN PASSWORD 'publisher' IN ROLE jobpub_daemon;
