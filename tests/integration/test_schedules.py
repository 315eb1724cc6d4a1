"""Recurring schedules on real PostgreSQL: the SQL interface, materialisation, changes."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from jobpub.db.database import Database, DatabaseConfig
from jobpub.db.schedules import ScheduleStore
from jobpub.scheduling.materializer import Materializer, MaterializerConfig

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
HORIZON = timedelta(seconds=60)


@contextlib.asynccontextmanager
async def materializer(db_url: str, horizon: timedelta = HORIZON) -> AsyncIterator[Materializer]:
    database = Database(DatabaseConfig(url=db_url, pool_size=1))
    await database.open()
    try:
        yield Materializer(ScheduleStore(database), MaterializerConfig(horizon, interval=0.1))
    finally:
        await database.close()


async def rows(db: Conn, sql: str, *params: object) -> list[tuple[Any, ...]]:
    cursor = await db.execute(sql, params)
    return await cursor.fetchall()


async def pending(db: Conn, name: str) -> list[tuple[Any, ...]]:
    """(occurrence_at, fire_at, payload, expires_at) of a schedule's pending rows."""
    return await rows(
        db,
        "SELECT occurrence_at, fire_at, payload, expires_at FROM jobs"
        " WHERE schedule_name = %s AND NOT processed ORDER BY occurrence_at",
        name,
    )


async def test_the_issues_inserts_materialise_occurrences_ahead(db_url: str, db: Conn) -> None:
    await db.execute(
        "INSERT INTO schedules (name, topic, payload, every)"
        " VALUES ('heartbeat', 'devices/all/ping', '{}', interval '30 seconds')"
    )
    await db.execute("UPDATE schedules SET every = interval '5 minutes'")  # 576 in 2 days
    await db.execute(
        "INSERT INTO schedules (name, topic, payload, cron, timezone)"
        " VALUES ('nightly', 'reports/run', '{}', '0 2 * * *', 'Europe/Berlin')"
    )
    async with materializer(db_url, horizon=timedelta(days=2)) as m:
        await m.materialise_once()
    (now,) = (await rows(db, "SELECT now()"))[0]
    heartbeat = await pending(db, "heartbeat")
    assert len(heartbeat) in (575, 576)
    assert all(o.minute % 5 == 0 and o.second == 0 for o, *_ in heartbeat)
    assert all(o == fire_at and o > now for o, fire_at, *_ in heartbeat)
    nightly = [o.astimezone(UTC) for o, *_ in await pending(db, "nightly")]
    assert len(nightly) == 2
    assert all(o.hour in (0, 1) and o.minute == 0 for o in nightly)  # 02:00 in Berlin
    (topic, qos, retain), *_ = await rows(
        db, "SELECT topic, qos, retain FROM jobs WHERE schedule_name = 'nightly'"
    )
    assert (topic, qos, retain) == ("reports/run", 1, False)


async def test_replicas_racing_make_each_occurrence_one_row(db_url: str, db: Conn) -> None:
    await db.execute(
        "INSERT INTO schedules (name, topic, every) "
        "SELECT 's' || i, 'race/' || i, interval '1 second' FROM generate_series(1, 50) i"
    )
    # Three materialisers at once, and a forced re-pass over what is already there.
    async with materializer(db_url) as a, materializer(db_url) as b, materializer(db_url) as c:
        await asyncio.gather(*(m.materialise_once() for m in (a, b, c) for _ in range(3)))
    await db.execute("UPDATE schedules SET materialised_until = now() - interval '1 s'")
    async with materializer(db_url) as again:
        await again.materialise_once()
    duplicates = await rows(
        db,
        "SELECT schedule_name, occurrence_at FROM jobs GROUP BY 1, 2 HAVING count(*) > 1",
    )
    assert duplicates == []
    per_schedule = await rows(db, "SELECT count(*) FROM jobs GROUP BY schedule_name")
    assert len(per_schedule) == 50
    assert all(59 <= count <= 62 for (count,) in per_schedule)


@pytest.mark.parametrize(("policy", "missed_rows"), [("all", 5), ("latest", 1), ("none", 0)])
async def test_catch_up_after_downtime(
    db_url: str, db: Conn, policy: str, missed_rows: int
) -> None:
    # Down for 5 min 30 s: five one-minute occurrences were never materialised.
    await db.execute(
        "INSERT INTO schedules (name, topic, every, catch_up, materialised_until, starts_at)"
        " VALUES ('down', 'catch/up', interval '1 minute', %s,"
        "         now() - interval '5 min 30 s', now() - interval '10 min 30 s')",
        (policy,),
    )
    async with materializer(db_url) as m:
        await m.materialise_once()
    (missed,), *_ = await rows(
        db, "SELECT count(*) FROM jobs WHERE schedule_name = 'down' AND fire_at <= now()"
    )
    assert missed == missed_rows
    (ahead,), *_ = await rows(
        db, "SELECT count(*) FROM jobs WHERE schedule_name = 'down' AND fire_at > now()"
    )
    assert ahead == 1  # the next minute within the 60 s horizon


async def test_latest_missed_is_the_most_recent(db_url: str, db: Conn) -> None:
    await db.execute(
        "INSERT INTO schedules (name, topic, every, materialised_until, starts_at)"
        " VALUES ('down', 'catch/up', interval '1 minute',"
        "         now() - interval '5 min 30 s', now() - interval '10 min 30 s')"
    )
    async with materializer(db_url) as m:
        await m.materialise_once()
    (late,), *_ = await rows(
        db,
        "SELECT now() - fire_at FROM jobs WHERE schedule_name = 'down' AND fire_at <= now()",
    )
    assert timedelta(seconds=30) <= late < timedelta(seconds=31)


async def test_a_change_takes_effect_for_occurrences_not_yet_published(
    db_url: str, db: Conn
) -> None:
    await db.execute(
        "INSERT INTO schedules (name, topic, payload, every)"
        " VALUES ('hb', 'devices/ping', 'old', interval '10 seconds')"
    )
    async with materializer(db_url) as m:
        await m.materialise_once()
        # One row already published: a change must not touch it.
        await db.execute(
            "UPDATE jobs SET processed = true, processed_at = now()"
            " WHERE id = (SELECT min(id) FROM jobs WHERE schedule_name = 'hb')"
        )
        assert {payload for _, _, payload, _ in await pending(db, "hb")} == {"old"}
        await db.execute(
            "UPDATE schedules SET payload = 'new', expire_after = interval '5 s' WHERE name = 'hb'"
        )
        assert await pending(db, "hb") == [], "pending rows dropped in the same transaction"
        await m.materialise_once()
        changed = await pending(db, "hb")
        assert len(changed) >= 5
        assert all(p == "new" and e == f + timedelta(seconds=5) for _, f, p, e in changed)
        (published,), *_ = await rows(
            db, "SELECT payload FROM jobs WHERE schedule_name = 'hb' AND processed"
        )
        assert published == "old"

        await db.execute("UPDATE schedules SET enabled = false WHERE name = 'hb'")
        assert await pending(db, "hb") == []
        await m.materialise_once()
        assert await pending(db, "hb") == [], "a disabled schedule makes no rows"
        await db.execute("UPDATE schedules SET enabled = true WHERE name = 'hb'")
        await m.materialise_once()
        assert len(await pending(db, "hb")) >= 5

        await db.execute("DELETE FROM schedules WHERE name = 'hb'")
        assert await pending(db, "hb") == []
        await m.materialise_once()
        assert await pending(db, "hb") == []
    (kept,), *_ = await rows(db, "SELECT count(*) FROM jobs WHERE processed")
    assert kept == 1, "published history stays"


async def test_a_row_being_published_is_left_to_its_replica(db_url: str, db: Conn) -> None:
    await db.execute(
        "INSERT INTO schedules (name, topic, every) VALUES ('hb', 'x/y', interval '5 s')"
    )
    async with materializer(db_url) as m:
        await m.materialise_once()
    async with await psycopg.AsyncConnection.connect(db_url) as claimer:
        held = await claimer.execute(
            "SELECT id FROM jobs WHERE schedule_name = 'hb' ORDER BY fire_at LIMIT 1 FOR UPDATE"
        )
        (held_id,) = await held.fetchone() or (None,)
        await asyncio.wait_for(db.execute("DELETE FROM schedules WHERE name = 'hb'"), 5)
        await claimer.rollback()
    assert [(held_id,)] == await rows(db, "SELECT id FROM jobs")


async def test_an_invalid_cron_ends_disabled_with_its_reason(db_url: str, db: Conn) -> None:
    await db.execute(
        "INSERT INTO schedules (name, topic, cron) VALUES"
        " ('broken', 'a/b', '61 * * * *'), ('fine', 'a/c', '* * * * * *')"
    )
    async with materializer(db_url) as m:
        await m.materialise_once()
        await m.materialise_once()
    ((enabled, reason),) = await rows(
        db, "SELECT enabled, disabled_reason FROM schedules WHERE name = 'broken'"
    )
    assert not enabled
    assert "invalid cron expression '61 * * * *'" in reason
    assert await pending(db, "broken") == []
    assert len(await pending(db, "fine")) >= 59, "the other schedules go on"
    await db.execute(
        "UPDATE schedules SET cron = '*/5 * * * *', enabled = true WHERE name = 'broken'"
    )
    ((enabled, reason),) = await rows(
        db, "SELECT enabled, disabled_reason FROM schedules WHERE name = 'broken'"
    )
    assert enabled
    assert reason is None


@pytest.mark.parametrize(
    ("columns", "values", "error"),
    [
        ("every, cron", "interval '1 s', '* * * * *'", "schedules_every_or_cron"),
        ("topic", "'x'", "schedules_every_or_cron"),
        ("every", "interval '500 ms'", "schedules_every_at_least_a_second"),
        ("every", "interval '1 month'", "schedules_every_at_least_a_second"),
        ("cron, timezone", "'0 2 * * *', 'Europe/Berlln'", 'unknown time zone "Europe/Berlln"'),
        ("every, catch_up", "interval '1 s', 'some'", "schedules_catch_up_valid"),
        ("every, qos", "interval '1 s', 3", "schedules_qos_valid"),
    ],
)
async def test_invalid_definitions_are_refused_at_insert(
    db: Conn, columns: str, values: str, error: str
) -> None:
    statement = f"INSERT INTO schedules (name, topic, {columns}) VALUES ('bad', 'a/b', {values})"
    if columns == "topic":
        statement = "INSERT INTO schedules (name, topic) VALUES ('bad', 'a/b')"
    with pytest.raises(psycopg.errors.CheckViolation, match=error):
        await db.execute(statement)


async def test_an_unknown_time_zone_is_refused_at_update_too(db: Conn) -> None:
    await db.execute(
        "INSERT INTO schedules (name, topic, cron, timezone)"
        " VALUES ('ok', 'a/b', '0 2 * * *', 'America/New_York')"
    )
    with pytest.raises(psycopg.errors.CheckViolation, match="unknown time zone"):
        await db.execute("UPDATE schedules SET timezone = 'Nowhere/Land'")


async def test_the_daemon_role_materialises_but_cannot_write_jobs(db_url: str, db: Conn) -> None:
    user = f"role_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {user} LOGIN IN ROLE jobpub_daemon")
    try:
        await db.execute(
            "INSERT INTO schedules (name, topic, cron) VALUES"
            " ('hb', 'a/b', '*/2 * * * * *'), ('broken', 'a/c', 'nope')"
        )
        as_daemon = db_url.replace("postgres@", f"{user}@")
        async with materializer(as_daemon) as m:
            await m.materialise_once()
        assert len(await pending(db, "hb")) >= 29
        ((enabled,),) = await rows(db, "SELECT enabled FROM schedules WHERE name = 'broken'")
        assert not enabled
        async with await psycopg.AsyncConnection.connect(as_daemon, autocommit=True) as conn:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute("UPDATE schedules SET topic = 'c/d'")
    finally:
        await db.execute(f"DROP OWNED BY {user}")
        await db.execute(f"DROP ROLE {user}")


async def test_idle_materialiser_takes_no_schedule_until_half_the_horizon_is_used(
    db_url: str, db: Conn
) -> None:
    await db.execute("INSERT INTO schedules (name, topic, every) VALUES ('hb', 'a/b', '1 s')")
    async with materializer(db_url) as m:
        await m.materialise_once()
        (before,), *_ = await rows(db, "SELECT materialised_until FROM schedules")
        await m.materialise_once()
        (after,), *_ = await rows(db, "SELECT materialised_until FROM schedules")
    assert before == after
    assert before > datetime.now(UTC) + HORIZON - timedelta(seconds=5)


async def test_rows_the_database_refuses_disable_only_their_schedule(db_url: str, db: Conn) -> None:
    # A jobs constraint the schedules table does not mirror (another feature's, say).
    await db.execute("ALTER TABLE jobs ADD CONSTRAINT test_refuse CHECK (topic <> 'refused/topic')")
    await db.execute(
        "INSERT INTO schedules (name, topic, every) VALUES"
        " ('a', 'fine/a', '1 s'), ('refused', 'refused/topic', '1 s'), ('z', 'fine/z', '1 s')"
    )
    async with materializer(db_url) as m:
        await m.materialise_once()
    assert len(await pending(db, "a")) >= 59
    assert len(await pending(db, "z")) >= 59
    ((enabled, reason),) = await rows(
        db, "SELECT enabled, disabled_reason FROM schedules WHERE name = 'refused'"
    )
    assert not enabled
    assert "test_refuse" in reason
