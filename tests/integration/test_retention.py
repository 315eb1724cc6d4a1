"""Retention on real PostgreSQL: old finished rows go, in batches, one replica at a time."""

from __future__ import annotations

import asyncio
import datetime
import itertools
import uuid

import psycopg
import pytest

from jobpub.db.retention import Pruner, RetentionConfig
from jobpub.metrics import Metrics
from testbed.broker import Broker
from testbed.daemon import make_settings, running
from testbed.waiting import eventually

Conn = psycopg.AsyncConnection[tuple[object, ...]]
DAY = 86400.0
# The lock of queries.PRUNE_*_BATCH, held here as another replica's prune would hold it.
PRUNE_LOCK = "SELECT pg_advisory_xact_lock(7201203842)"

# (label, processed, processed_at, failed_at, next_attempt_at, fire_at): every kind of row
ROWS = [
    ("published-8d", True, "now() - interval '8 days'", "NULL", "NULL", "now() - interval '9d'"),
    ("published-1d", True, "now() - interval '1 day'", "NULL", "NULL", "now() - interval '1 day'"),
    # A seed-style row marked processed without a time: nothing says it is old; kept.
    ("published-no-time", True, "NULL", "NULL", "NULL", "now() - interval '90 days'"),
    ("dead-31d", False, "NULL", "now() - interval '31 days'", "NULL", "now() - interval '40 days'"),
    ("dead-8d", False, "NULL", "now() - interval '8 days'", "NULL", "now() - interval '9 days'"),
    ("pending-overdue-1y", False, "NULL", "NULL", "NULL", "now() - interval '365 days'"),
    ("pending-retrying", False, "NULL", "NULL", "now() + interval '1h'", "now() - interval '60d'"),
    ("pending-ahead", False, "NULL", "NULL", "NULL", "now() + interval '1 day'"),
]  # fmt: skip


async def _insert_every_kind(db: Conn, copies: int = 1) -> None:
    for label, processed, processed_at, failed_at, next_attempt_at, fire_at in ROWS:
        # Test data only: the expressions above are literals of this module.
        await db.execute(
            "INSERT INTO jobs (topic, payload, processed, processed_at, failed_at,"
            f" next_attempt_at, fire_at) SELECT 't', %s, %s, {processed_at}, {failed_at},"
            f" {next_attempt_at}, {fire_at} FROM generate_series(1, %s)",
            (label, processed, copies),
        )


async def _left(db: Conn) -> dict[str, int]:
    cursor = await db.execute("SELECT payload, count(*) FROM jobs GROUP BY payload")
    return {str(label): int(str(count)) for label, count in await cursor.fetchall()}


def _config(published: float = 7 * DAY, dead: float = 30 * DAY, batch: int = 5) -> RetentionConfig:
    # The year-old pending row is no backlog here: these tests are about what is pruned.
    return RetentionConfig(published=published, dead=dead, batch_size=batch, batch_pause=0.001,
                           backlog_grace=400 * DAY)  # fmt: skip


def _pruned(metrics: Metrics, state: str) -> float:
    value = metrics.registry.get_sample_value("jobpub_jobs_pruned_total", {"state": state})
    return value or 0.0


async def test_old_published_and_dead_rows_are_pruned_in_batches_and_nothing_else(
    db_url: str, db: Conn
) -> None:
    await _insert_every_kind(db, copies=12)  # 12 old rows of each kind: batches of 5, 5, 2
    metrics = Metrics()
    result = await Pruner(db_url, _config(), metrics).prune()
    assert (result.published, result.dead, result.busy) == (12, 12, False)
    kept = {label: 12 for label, *_ in ROWS if label not in ("published-8d", "dead-31d")}
    assert await _left(db) == kept
    assert (_pruned(metrics, "published"), _pruned(metrics, "dead")) == (12, 12)
    again = await Pruner(db_url, _config(), metrics).prune()
    assert (again.published, again.dead) == (0, 0)


async def test_zero_keeps_rows_forever(db_url: str, db: Conn) -> None:
    await _insert_every_kind(db)
    everything = await _left(db)
    forever = Pruner(db_url, _config(published=0, dead=0), Metrics())
    await asyncio.wait_for(forever.run(asyncio.Event()), timeout=5)  # returns: nothing to do
    assert (await forever.prune()).published == 0
    assert await _left(db) == everything
    # Each setting alone: dead rows kept forever, published ones pruned, and the reverse.
    assert (await Pruner(db_url, _config(dead=0), Metrics()).prune()).published == 1
    assert "dead-31d" in await _left(db)
    assert (await Pruner(db_url, _config(published=0), Metrics()).prune()).dead == 1
    assert "dead-31d" not in await _left(db)
    assert "published-1d" in await _left(db)


async def test_pruning_waits_while_due_rows_wait(db_url: str, db: Conn) -> None:
    await _insert_every_kind(db)
    behind = RetentionConfig(published=7 * DAY, dead=30 * DAY, backlog_grace=1.0)
    result = await Pruner(db_url, behind, Metrics()).prune()
    assert (result.published, result.dead, result.deferred) == (0, 0, True)
    # Published, the backlog is gone; rows waiting out a retry backoff are not one.
    await db.execute("UPDATE jobs SET processed = true, processed_at = now()"
                     " WHERE payload = 'pending-overdue-1y'")  # fmt: skip
    result = await Pruner(db_url, behind, Metrics()).prune()
    assert (result.published, result.dead, result.deferred) == (1, 1, False)


async def test_a_replica_does_not_prune_while_another_holds_the_lock(db_url: str, db: Conn) -> None:
    await _insert_every_kind(db)
    async with await psycopg.AsyncConnection.connect(db_url) as other_replica:
        await other_replica.execute(PRUNE_LOCK)  # its transaction stays open: lock held
        result = await Pruner(db_url, _config(), Metrics()).prune()
        assert (result.published, result.dead, result.busy) == (0, 0, True)
        assert "published-8d" in await _left(db)
        await other_replica.rollback()
    result = await Pruner(db_url, _config(), Metrics()).prune()
    assert (result.published, result.dead, result.busy) == (1, 1, False)


async def test_replicas_pruning_together_share_the_rows_and_never_overlap(
    db_url: str, db: Conn
) -> None:
    await _insert_every_kind(db, copies=400)
    # Each deleted row leaves its transaction and the time: batches must not interleave.
    await db.execute("CREATE TABLE deletions (xid bigint, at timestamptz)")
    await db.execute(
        "CREATE FUNCTION log_deletion() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " INSERT INTO deletions VALUES (txid_current(), clock_timestamp()); RETURN OLD; END $$"
    )
    await db.execute(
        "CREATE TRIGGER log_deletion BEFORE DELETE ON jobs"
        " FOR EACH ROW EXECUTE FUNCTION log_deletion()"
    )
    replicas = [Pruner(db_url, _config(batch=20), Metrics()) for _ in range(3)]
    results = []
    while "published-8d" in await _left(db) or "dead-31d" in await _left(db):
        results += await asyncio.gather(*(replica.prune() for replica in replicas))
    assert sum(r.published for r in results) == 400
    assert sum(r.dead for r in results) == 400
    assert any(r.busy for r in results), "the others found the lock taken"
    cursor = await db.execute(
        "SELECT min(at), max(at) FROM deletions GROUP BY xid ORDER BY min(at)"
    )
    batches = await cursor.fetchall()
    assert len(batches) >= 40  # 800 rows in batches of at most 20
    for (_, previous_end), (next_start, _) in itertools.pairwise(batches):
        assert isinstance(previous_end, datetime.datetime)
        assert isinstance(next_start, datetime.datetime)
        assert next_start > previous_end, "two batches deleted at the same time"
    assert (await _left(db))["pending-overdue-1y"] == 400


async def test_the_daemons_role_prunes_yet_still_cannot_delete(db_url: str, db: Conn) -> None:
    await _insert_every_kind(db)
    user = f"role_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {user} LOGIN IN ROLE jobpub_daemon")
    try:
        as_daemon = db_url.replace("postgres@", f"{user}@")
        result = await Pruner(as_daemon, _config(), Metrics()).prune()
        assert (result.published, result.dead) == (1, 1)
        async with await psycopg.AsyncConnection.connect(as_daemon, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute("DELETE FROM jobs")
        # Not everyone may call the functions: only the daemon's role.
        await db.execute(f"REVOKE jobpub_daemon FROM {user}")
        async with await psycopg.AsyncConnection.connect(as_daemon, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute("SELECT jobpub_prune_published(now(), 10)")
    finally:
        await db.execute(f"DROP OWNED BY {user}")
        await db.execute(f"DROP ROLE {user}")


async def test_a_running_replica_prunes(db_url: str, db: Conn, broker: Broker) -> None:
    await _insert_every_kind(db)
    settings = make_settings(db_url, broker.url, retention=2 * DAY, dead_retention=10 * DAY)
    async with running(settings) as metrics:
        await eventually(lambda: _pruned(metrics, "dead") == 1, 15, "the dead row pruned")
    left = await _left(db)
    assert "published-8d" not in left
    assert "dead-31d" not in left
    assert "dead-8d" in left
    assert "published-1d" in left
    assert _pruned(metrics, "published") == 1
