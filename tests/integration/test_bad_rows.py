"""Rows no replica can publish end dead with their reason; their batch and replica go on.

Each kind is left in a table adopted from JobPublisher (nullable topic and payload,
rows from before jobpub's constraints), as a real adoption would leave it.
"""

from __future__ import annotations

import collections
from typing import Any

import psycopg
import pytest

from jobpub import migrations
from jobpub.db.admin import migrate
from jobpub.models import PUBLISHED
from testbed.broker import Broker
from testbed.daemon import make_settings, running
from testbed.subscriber import Subscriber
from testbed.waiting import eventually
from tests.integration.test_schema_and_claim import insert_due, opened_store

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

# JobPublisher's table, loosely typed as old tables are, with a qos column of its own.
LEGACY_TABLE = (
    "CREATE TABLE jobs (id serial PRIMARY KEY, topic text, payload text,"
    " fire_at timestamptz NOT NULL DEFAULT now(), processed boolean NOT NULL DEFAULT false,"
    " processed_at timestamptz, qos smallint NOT NULL DEFAULT 1)"
)


async def adopt(url: str, rows: list[tuple[Any, ...]]) -> None:
    """A legacy table holding `rows` (topic, payload, fire_at, qos), then `jobpub migrate`."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(LEGACY_TABLE)
        for topic, payload, fire_at, qos in rows:
            await conn.execute(
                "INSERT INTO jobs (topic, payload, fire_at, qos) VALUES (%s, %s, %s, %s)",
                (topic, payload, fire_at, qos),
            )
    await migrate(url, migrations.scripts())


async def dead_rows(db: Conn) -> dict[int, str]:
    cursor = await db.execute(
        "SELECT id, last_error FROM jobs WHERE failed_at IS NOT NULL AND NOT processed"
    )
    return dict(await cursor.fetchall())


async def published_count(db: Conn) -> int:
    cursor = await db.execute("SELECT count(*) FROM jobs WHERE processed")
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


@pytest.mark.parametrize(
    "case",  # (topic, fire_at, qos, the reason it ends dead with)
    [
        ("bad/{}/never", "-infinity", 1, "fire_at is -infinity"),
        ("bad/{}/+/x", "-1 s", 1, "wildcard"),
        ("bad/{}/#", "-1 s", 1, "wildcard"),
        ("", "-1 s", 1, "topic is empty"),
        ("bad/{}/\x01", "-1 s", 1, "control character"),
        ("bad/{}/qos", "-1 s", 3, "qos 3 is not 0, 1 or 2"),
        (None, "-1 s", 1, "topic is NULL"),
        ("bad/{}/null-payload", "-1 s", 1, "payload is NULL"),
    ],
)
async def test_a_legacy_row_that_breaks_a_constraint_ends_dead_and_the_rest_flow(
    empty_db_url: str,
    broker: Broker,
    subscriber: Subscriber,
    case: tuple[str | None, str, int, str],
) -> None:
    topic, fire_at, qos, reason = case
    # The bad row is the oldest due row: every claim takes it first, with good rows.
    bad_fire_at = fire_at if fire_at == "-infinity" else "2000-01-01Z"
    bad_topic = topic.format(subscriber.prefix) if topic else topic
    payload = None if reason == "payload is NULL" else "x"
    good = [(subscriber.topic(f"good/{i}"), "ok", "2001-01-01Z", 1) for i in range(3)]
    await adopt(empty_db_url, [(bad_topic, payload, bad_fire_at, qos), *good])
    async with (
        await psycopg.AsyncConnection.connect(empty_db_url, autocommit=True) as db,
        running(make_settings(empty_db_url, broker.url)),
    ):
        await eventually(lambda: _published(db, 3), 20, "the good rows published")
        dead = await dead_rows(db)
    assert list(dead) == [1]
    assert reason in dead[1]
    subscriber.wait_for_jobs(3, 10)
    copies = collections.Counter(m.topic for m in subscriber.snapshot())
    assert sorted(copies) == [g[0] for g in good]
    assert set(copies.values()) == {1}, "a batch was published again"


async def test_a_null_payload_inserted_after_adoption_is_refused_at_claim(
    empty_db_url: str, broker: Broker, subscriber: Subscriber
) -> None:
    # The adopted column still allows NULL, and no constraint refuses it at INSERT: the
    # claim does. Before, AttributeError escaped publish and stopped the replica.
    await adopt(empty_db_url, [])
    async with await psycopg.AsyncConnection.connect(empty_db_url, autocommit=True) as db:
        await db.execute(
            "INSERT INTO jobs (topic, payload, fire_at) VALUES (%s, NULL, now() - interval '1 h')",
            (subscriber.topic("null"),),
        )
        await insert_due(db, 3, topic=subscriber.topic("good"))
        async with running(make_settings(empty_db_url, broker.url)):
            await eventually(lambda: _published(db, 3), 20, "the good rows published")
            await eventually(lambda: _dead(db, 1), 10, "the NULL row dead")
        assert await dead_rows(db) == {1: "payload is NULL"}
    assert {m.topic for m in subscriber.snapshot()} == {
        subscriber.topic(f"good/{i}") for i in (1, 2, 3)
    }


async def test_an_oversized_payload_goes_dead_unread_and_claims_are_bounded_in_bytes(
    db_url: str, db: Conn
) -> None:
    kib = 1024
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at) VALUES "
        "('t/huge', repeat('x', 300 * 1024), now() - interval '1 h')"
    )
    await db.execute(  # five rows of 100 KiB: a 250 KiB claim reads three of them
        "INSERT INTO jobs (topic, payload, fire_at) "
        "SELECT 't/' || i, repeat('y', 100 * 1024), now() - interval '1 min' + i * interval '1 s'"
        " FROM generate_series(1, 5) i"
    )
    overrides = {"max_payload_bytes": 256 * kib, "batch_max_bytes": 250 * kib}
    async with opened_store(db_url, **overrides) as store:
        first = await store.claim()
        assert [(r.id, r.reason) for r in first.refused] == [
            (1, "payload is 307200 bytes, over JOBPUB_MAX_PAYLOAD_BYTES (262144)")
        ]
        # Bytes before a row decide: 0, 100 and 200 KiB start below the bound.
        assert [job.topic for job in first.jobs] == ["t/1", "t/2", "t/3"]
        assert all(len(job.payload) == 100 * kib for job in first.jobs)
        assert first.held == 2
        assert first.next_wake_in == 0, "held rows are due: claim again at once"
        second = await store.claim()
        assert second.jobs == [], "held rows stay locked until their batch ends"
        await store.release(second)
        settled = await store.settle(first, [PUBLISHED] * 3)
        assert (settled.published, settled.dead, settled.released) == (3, 1, 2)
        third = await store.claim()
        assert [job.topic for job in third.jobs] == ["t/4", "t/5"]
        await store.release(third)
    assert await dead_rows(db) == {1: first.refused[0].reason}
    assert await published_count(db) == 3


async def test_a_batch_of_refused_rows_only_goes_dead_on_release(db_url: str, db: Conn) -> None:
    # The relay releases a batch with nothing to publish; its refused rows must not wait.
    await db.execute("INSERT INTO jobs (topic, payload) VALUES ('t/huge', repeat('x', 2000))")
    async with opened_store(db_url, max_payload_bytes=1000) as store:
        batch = await store.claim()
        assert batch.jobs == []
        await store.release(batch)
    assert await dead_rows(db) == {1: "payload is 2000 bytes, over JOBPUB_MAX_PAYLOAD_BYTES (1000)"}


async def test_the_constraints_still_refuse_bad_rows_at_insert_but_not_a_dead_one(
    db: Conn,
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_topic_no_wildcards"):
        await db.execute("INSERT INTO jobs (topic) VALUES ('a/+')")
    # A settled row is history: marking one dead or published never trips a constraint.
    await db.execute("INSERT INTO jobs (topic, failed_at) VALUES ('a/+', now())")


async def _published(db: Conn, count: int) -> bool:
    return await published_count(db) >= count


async def _dead(db: Conn, count: int) -> bool:
    return len(await dead_rows(db)) >= count
