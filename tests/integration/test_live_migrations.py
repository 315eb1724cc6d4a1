"""Migrations on a live table: a long transaction never lets them hold producers' INSERTs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
import pytest

from jobpub import migrations
from jobpub.db.admin import MigrationPolicy, migrate
from jobpub.errors import DatabaseError
from jobpub.migrations import Migration
from testbed.waiting import eventually

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

LOCK_TIMEOUT = 0.5
# Test-only migrations after the shipped ones: one needs ACCESS EXCLUSIVE on jobs, one
# builds an index concurrently (outside a transaction).
ADD_COLUMN = Migration(9001, "test_note", "ALTER TABLE jobs ADD COLUMN test_note text;")
CONCURRENT_INDEX = Migration(
    9002,
    "test_note_index",
    "-- jobpub:no-transaction\n"
    "-- a comment; with a semicolon;\n"
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_test_note_idx ON jobs (test_note);\n"
    "CREATE INDEX CONCURRENTLY IF NOT EXISTS jobs_test_created_idx\n"
    "    ON jobs (created_at);\n",
)


async def scalar(conn: Conn, query: str) -> Any:
    cursor = await conn.execute(query)
    row = await cursor.fetchone()
    assert row is not None
    return row[0]


async def insert_timed(url: str, bound: float) -> float:
    """One producer INSERT on a connection of its own; how long it took (fails past `bound`)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as producer:
        started = time.monotonic()
        async with asyncio.timeout(bound):
            await producer.execute("INSERT INTO jobs (topic, payload) VALUES ('t/live', 'x')")
        return time.monotonic() - started


async def test_a_long_transaction_neither_blocks_producers_nor_fails_the_migration(
    db_url: str, db: Conn
) -> None:
    policy = MigrationPolicy(lock_timeout=LOCK_TIMEOUT, attempts=100, retry_delay=0.05,
                             retry_delay_max=0.2)  # fmt: skip
    scripts = [*migrations.scripts(), ADD_COLUMN, CONCURRENT_INDEX]
    async with await psycopg.AsyncConnection.connect(db_url) as reader:
        await reader.execute("SELECT count(*) FROM jobs")  # holds ACCESS SHARE until it ends
        migration = asyncio.create_task(migrate(db_url, scripts, policy), name="migrate")
        await eventually(
            lambda: scalar(
                db,
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND mode = 'AccessExclusiveLock'",
            ),
            10,
            "the migration to queue for its lock",
        )
        # Producers keep inserting while the migration retries: each waits at most the
        # lock timeout (queued behind the migration's request), never for the reader.
        waits = [await insert_timed(db_url, LOCK_TIMEOUT + 2.0) for _ in range(8)]
        assert max(waits) < LOCK_TIMEOUT + 1.0, waits
        assert not migration.done()
        await reader.rollback()  # the long transaction ends
        applied = await asyncio.wait_for(migration, 30)
    assert applied == [ADD_COLUMN.version, CONCURRENT_INDEX.version]
    assert await scalar(
        db,
        "SELECT bool_and(indisvalid) AND count(*) = 2 FROM pg_index WHERE indexrelid IN "
        "('jobs_test_note_idx'::regclass, 'jobs_test_created_idx'::regclass)",
    )
    assert await migrate(db_url, scripts, policy) == []


async def test_a_transaction_that_never_ends_makes_migrate_give_up_clearly(
    db_url: str, db: Conn
) -> None:
    policy = MigrationPolicy(lock_timeout=0.2, attempts=3, retry_delay=0.05)
    async with await psycopg.AsyncConnection.connect(db_url) as reader:
        await reader.execute("SELECT count(*) FROM jobs WHERE id > 0")
        with pytest.raises(DatabaseError) as failure:
            await migrate(db_url, [*migrations.scripts(), ADD_COLUMN], policy)
        reader_pid = reader.info.backend_pid
    message = str(failure.value)
    assert "migration 9001 (test_note) gave up" in message
    assert "3 attempts of 0.2 s" in message
    assert f"pid {reader_pid}" in message
    assert "WHERE id > 0" in message
    # Nothing half done: the column is not there and the version is not recorded.
    assert await scalar(db, "SELECT count(*) FROM jobpub_migrations WHERE version = 9001") == 0
    assert await scalar(
        db, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'test_note'"
    ) == 0  # fmt: skip


async def test_a_concurrent_build_waits_for_old_snapshots_without_blocking_producers(
    db_url: str, db: Conn
) -> None:
    await migrate(db_url, [*migrations.scripts(), ADD_COLUMN])
    async with await psycopg.AsyncConnection.connect(db_url) as reader:
        await reader.set_isolation_level(psycopg.IsolationLevel.REPEATABLE_READ)
        await reader.execute("SELECT count(*) FROM jobs")  # an old snapshot, kept open
        migration = asyncio.create_task(
            migrate(db_url, [*migrations.scripts(), ADD_COLUMN, CONCURRENT_INDEX]),
            name="migrate",
        )
        await eventually(
            lambda: scalar(
                db,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query ILIKE 'CREATE INDEX CONCURRENTLY%%'",
            ),
            10,
            "the build to wait for the reader's snapshot",
        )
        waits = [await insert_timed(db_url, 2.0) for _ in range(5)]
        assert max(waits) < 1.0, waits
        await reader.rollback()
        assert await asyncio.wait_for(migration, 30) == [CONCURRENT_INDEX.version]


async def test_an_index_left_invalid_by_a_failed_concurrent_build_is_rebuilt(
    db_url: str, db: Conn
) -> None:
    unique = Migration(
        9003,
        "unique_topic",
        "-- jobpub:no-transaction\n"
        "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS jobs_test_topic_key ON jobs (topic);\n",
    )
    await db.execute("INSERT INTO jobs (topic) VALUES ('t/same'), ('t/same')")
    with pytest.raises(DatabaseError, match="could not create unique index"):
        await migrate(db_url, [*migrations.scripts(), unique])
    assert await scalar(
        db, "SELECT NOT indisvalid FROM pg_index WHERE indexrelid = 'jobs_test_topic_key'::regclass"
    )  # the failed build left it behind, INVALID: IF NOT EXISTS alone would keep it
    await db.execute("DELETE FROM jobs WHERE id = (SELECT max(id) FROM jobs)")
    assert await migrate(db_url, [*migrations.scripts(), unique]) == [unique.version]
    assert await scalar(
        db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'jobs_test_topic_key'::regclass"
    )
