"""The schema, migrations and the claim statement against real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from jobpub import migrations
from jobpub.db import queries
from jobpub.db.admin import migrate
from jobpub.db.claim import ClaimConfig, ClaimedBatch, Claimer
from jobpub.db.complete import Completer, RetryPolicy
from jobpub.db.database import Database, DatabaseConfig
from jobpub.metrics import Metrics
from jobpub.models import PUBLISHED, Delivery, Outcome, Settled
from testbed.daemon import make_settings
from testbed.proxy import proxy_to

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


async def insert_due(db: Conn, count: int, *, topic: str = "t/x", offset: str = "-1 s") -> None:
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at) "
        "SELECT %s || '/' || i, 'p' || i, now() + %s::interval FROM generate_series(1, %s) i",
        (topic, offset, count),
    )


@dataclass(frozen=True)
class Store:
    """The database side of one replica, as the daemon composes it (jobpub.app)."""

    claimer: Claimer
    completer: Completer

    async def claim(self) -> ClaimedBatch:
        return await self.claimer.claim()

    async def settle(self, batch: ClaimedBatch, outcomes: Sequence[Outcome]) -> Settled:
        return await self.completer.settle(batch, outcomes)

    async def release(self, batch: ClaimedBatch) -> None:
        await self.completer.release(batch)


@contextlib.asynccontextmanager
async def opened_store(db_url: str, **overrides: Any) -> AsyncIterator[Store]:
    """Claimer and Completer over one pool, configured from settings as the daemon does."""
    settings = make_settings(db_url, "mqtt://127.0.0.1:1", **overrides)
    database = Database(DatabaseConfig(db_url, pool_size=settings.concurrency))
    claim = ClaimConfig(
        limit=settings.batch_size,
        lookahead=settings.lookahead,
        consumer_count=settings.consumer_count,
        consumer_index=settings.consumer_index,
        takeover_delay=settings.takeover_delay,
        max_payload_bytes=settings.max_payload_bytes,
        batch_max_bytes=settings.batch_max_bytes,
    )
    retry = RetryPolicy(settings.max_attempts, settings.retry_backoff, settings.retry_backoff_max)
    await database.open()
    try:
        yield Store(Claimer(database, claim, Metrics()), Completer(database, retry))
    finally:
        await database.close()


async def test_migrate_is_idempotent_and_safe_when_run_concurrently(empty_db_url: str) -> None:
    scripts = migrations.scripts()
    applied = await asyncio.gather(*(migrate(empty_db_url, scripts) for _ in range(5)))
    assert sorted(len(a) for a in applied) == [0, 0, 0, 0, len(scripts)]
    assert await migrate(empty_db_url, scripts) == []
    async with await psycopg.AsyncConnection.connect(empty_db_url) as conn:
        cursor = await conn.execute("SELECT count(*) FROM jobpub_migrations")
        assert await cursor.fetchone() == (len(scripts),)


async def test_migrate_adopts_an_existing_jobpublisher_table(empty_db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_db_url, autocommit=True) as conn:
        await conn.execute(
            "CREATE TABLE jobs (id serial PRIMARY KEY, topic text NOT NULL, payload text,"
            " fire_at timestamptz NOT NULL, processed boolean NOT NULL DEFAULT false,"
            " processed_at timestamptz)"
        )
        await conn.execute(
            "INSERT INTO jobs (topic, payload, fire_at) VALUES ('old/1', 'x', now())"
        )
        await migrate(empty_db_url, migrations.scripts())
        cursor = await conn.execute("SELECT topic, qos, retain, attempts FROM jobs")
        assert await cursor.fetchall() == [("old/1", 1, False, 0)]


async def test_both_seed_insert_forms_work_unchanged(db: Conn) -> None:
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at) "
        """VALUES ('home/valve/7', '{"open": true}', now() + interval '5 min')"""
    )
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at, processed, processed_at) "
        """VALUES ('job/test/topic', '{"Job": "x"}', now(), false, null)"""
    )
    cursor = await db.execute("SELECT topic, qos, retain, processed FROM jobs ORDER BY id")
    assert await cursor.fetchall() == [
        ("home/valve/7", 1, False, False),
        ("job/test/topic", 1, False, False),
    ]


@pytest.mark.parametrize(
    ("topic", "qos", "constraint"),
    [
        ("", 1, "jobs_topic_not_empty"),
        ("a/+/b", 1, "jobs_topic_no_wildcards"),
        ("a/#", 1, "jobs_topic_no_wildcards"),
        ("a/\x01", 1, "jobs_topic_no_control_characters"),
        ("x" * 65536, 1, "jobs_topic_max_length"),
        ("ok/topic", 3, "jobs_qos_valid"),
        ("ok/topic", -1, "jobs_qos_valid"),
    ],
)
async def test_constraints_refuse_unpublishable_rows_at_insert(
    db: Conn, topic: str, qos: int, constraint: str
) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
        await db.execute(
            "INSERT INTO jobs (topic, payload, qos) VALUES (%s, 'x', %s)", (topic, qos)
        )


@pytest.mark.parametrize("fire_at", ["infinity", "-infinity"])
async def test_infinite_fire_at_is_refused_at_insert(db: Conn, fire_at: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="jobs_fire_at_finite"):
        await db.execute("INSERT INTO jobs (topic, fire_at) VALUES ('t/x', %s)", (fire_at,))


async def test_infinite_fire_at_left_from_before_the_constraint_does_not_break_claims(
    db_url: str, db: Conn
) -> None:
    # An adopted table may hold such rows: the NOT VALID constraint does not re-check them.
    await db.execute("ALTER TABLE jobs DROP CONSTRAINT jobs_fire_at_finite")
    await db.execute(
        "INSERT INTO jobs (topic, fire_at) VALUES ('t/never', 'infinity'), "
        "('t/always', '-infinity'), ('t/later', now() + interval '1 hour')"
    )
    async with opened_store(db_url, lookahead=0) as store:
        batch = await store.claim()
        assert [(job.topic, job.due_in) for job in batch.jobs] == [("t/always", 0)]
        assert batch.next_wake_in is not None
        assert 3590 < batch.next_wake_in <= 3600, "an `infinity` row is never the next wake"
        await store.release(batch)


async def test_null_topic_and_payload_are_refused(db: Conn) -> None:
    with pytest.raises(psycopg.errors.NotNullViolation):
        await db.execute("INSERT INTO jobs (topic, payload) VALUES (NULL, 'x')")
    with pytest.raises(psycopg.errors.NotNullViolation):
        await db.execute("INSERT INTO jobs (topic, payload) VALUES ('a', NULL)")


async def test_claim_query_uses_the_partial_index(db: Conn) -> None:
    # Many processed rows and a modest backlog: the shape the index is for.
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at, processed) "
        "SELECT 't/' || i, 'p', now() - interval '1 day' + i * interval '1 ms', i % 10 <> 0 "
        "FROM generate_series(1, 50000) i"
    )
    await db.execute("ANALYZE jobs")
    params = {"limit": 1000, "lookahead": 0.25, "consumer_count": 1, "consumer_index": 0,
              "takeover_delay": 30.0, "max_payload_bytes": 262144,
              "batch_max_bytes": 4194304}  # fmt: skip
    cursor = await db.execute(
        "EXPLAIN (FORMAT JSON) " + queries.CLAIM_DUE_JOBS,
        params,
    )
    row = await cursor.fetchone()
    assert row is not None
    plan = json.dumps(row[0])
    assert "jobs_pending_fire_at_idx" in plan, plan
    assert '"Node Type": "Sort"' not in plan, "the claim must read the index in order, not sort"


async def test_claim_reads_the_index_in_order_even_when_statistics_are_stale(db: Conn) -> None:
    # Autoanalyze last saw the table empty; then a bulk insert. The planner now expects a
    # handful of due rows, and without CLAIM_PLAN it sorts all 20,000 instead.
    await db.execute("ANALYZE jobs")
    await insert_due(db, 20_000)
    params = {"limit": 1000, "lookahead": 0.05, "consumer_count": 1, "consumer_index": 0,
              "takeover_delay": 30.0, "lane": 3, "max_payload_bytes": 262144,
              "batch_max_bytes": 4194304}  # fmt: skip
    for claim, index in [
        (queries.CLAIM_DUE_JOBS, "jobs_pending_fire_at_idx"),
        (queries.CLAIM_DUE_JOBS_IN_LANE, "jobs_pending_lane_idx"),
    ]:
        async with db.transaction(force_rollback=True):
            await db.execute(queries.CLAIM_PLAN)
            cursor = await db.execute("EXPLAIN (FORMAT JSON) " + claim, params)
            row = await cursor.fetchone()
        assert row is not None
        plan = json.dumps(row[0])
        assert index in plan, plan
        assert '"Node Type": "Sort"' not in plan, plan


async def test_next_wake_reads_one_index_entry_even_when_statistics_are_stale(
    db: Conn,
) -> None:
    # As above, with 20,000 scheduled rows: min(fire_at) read every one of their entries.
    await db.execute("ANALYZE jobs")
    await insert_due(db, 20_000, offset="1 hour")
    params = {"lookahead": 0.05, "consumer_count": 1, "consumer_index": 0}
    async with db.transaction(force_rollback=True):
        await db.execute(queries.CLAIM_PLAN)
        cursor = await db.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + queries.NEXT_WAKE, params)
        row = await cursor.fetchone()
    assert row is not None
    scans = [node for node in plan_nodes(row[0][0]["Plan"]) if "Scan" in node["Node Type"]]
    assert len(scans) == 2, json.dumps(row[0])
    assert all(node["Actual Rows"] <= 1 for node in scans), json.dumps(row[0])


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """`node` and every node under it in an EXPLAIN (FORMAT JSON) plan."""
    return [node, *(found for child in node.get("Plans", []) for found in plan_nodes(child))]


async def test_next_wake_is_the_earlier_of_the_next_row_and_the_next_retry(
    db_url: str, db: Conn
) -> None:
    await db.execute(
        "INSERT INTO jobs (topic, fire_at, attempts, next_attempt_at) VALUES "
        "('t/retrying', now() - interval '1 s', 1, now() + interval '30 min'), "
        "('t/later', now() + interval '1 hour', 0, NULL)"
    )
    async with opened_store(db_url, lookahead=0) as store:
        batch = await store.claim()
        assert batch.jobs == []
        assert batch.next_wake_in is not None
        assert 1790 < batch.next_wake_in <= 1800
        await store.release(batch)


async def test_under_a_backlog_claims_take_the_oldest_rows_of_one_lane(
    db_url: str, db: Conn
) -> None:
    await insert_due(db, 200)  # ids 1-200, one fire_at: the oldest are the lowest ids
    async with opened_store(db_url, batch_size=5) as store:
        first = await store.claim()  # no backlog seen yet: the oldest of all
        assert [job.id for job in first.jobs] == [1, 2, 3, 4, 5]
        second = await store.claim()  # the last claim was full: one lane
        lane = second.jobs[0].id % queries.LANES
        lane_rows = [i for i in range(6, 201) if i % queries.LANES == lane]
        assert [job.id for job in second.jobs] == lane_rows[:5]
        third = await store.claim()  # the next lane
        assert {job.id % queries.LANES for job in third.jobs} == {(lane + 1) % queries.LANES}
        for batch in (first, second, third):
            await store.release(batch)


async def test_a_nearly_drained_lane_gives_way_to_the_oldest_rows_of_all(
    db_url: str, db: Conn
) -> None:
    await insert_due(db, 20)  # at most 2 rows in any lane
    async with opened_store(db_url, batch_size=5) as store:
        batches = [await store.claim() for _ in range(3)]
        # the second claim tried a lane, found it short, and took the oldest instead
        assert [[job.id for job in b.jobs] for b in batches] == [
            [1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12, 13, 14, 15],
        ]  # fmt: skip
        for batch in batches:
            await store.release(batch)


async def test_a_static_partition_claims_in_order_without_lanes(db_url: str, db: Conn) -> None:
    await insert_due(db, 200)
    async with opened_store(db_url, batch_size=5, consumer_count=2, consumer_index=0) as store:
        first, second = await store.claim(), await store.claim()
        assert [job.id for job in first.jobs] == [2, 4, 6, 8, 10]
        assert [job.id for job in second.jobs] == [12, 14, 16, 18, 20]
        await store.release(first)
        await store.release(second)


async def test_claim_takes_due_rows_in_order_and_never_future_ones(db_url: str, db: Conn) -> None:
    await db.execute(
        "INSERT INTO jobs (topic, fire_at) VALUES "
        "('t/late', now() - interval '3 days'), ('t/due', now() - interval '1 s'), "
        "('t/future', now() + interval '1 hour'), ('t/done', now() - interval '1 s')"
    )
    await db.execute("UPDATE jobs SET processed = true WHERE topic = 't/done'")
    async with opened_store(db_url, lookahead=0) as store:
        batch = await store.claim()
        assert [job.topic for job in batch.jobs] == ["t/late", "t/due"]
        assert batch.next_wake_in is not None
        assert 3590 < batch.next_wake_in <= 3600
        await store.release(batch)


async def test_held_jobs_count_from_the_claims_start_not_from_when_its_rows_arrived(
    db_url: str, db: Conn
) -> None:
    # 20,000 rows due together a few seconds ahead, claimed at once: fetching them takes
    # most of the claim. A job is held until claimed_at + due_in, and due_in counts from
    # the transaction's now(): that moment must be no earlier than now() (never early),
    # and not the end of the fetch (every held job late by it).
    count = 20_000
    fire_at = time.time() + 5
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at) "
        "SELECT 'burst/' || i, '{}', to_timestamp(%s) FROM generate_series(1, %s) i",
        (fire_at, count),
    )
    async with opened_store(db_url, lookahead=10, batch_size=count) as store:
        wall_minus_monotonic = time.time() - time.monotonic()
        started = time.monotonic()
        batch = await store.claim()
        ended = time.monotonic()
        try:
            assert len(batch.jobs) == count
            send_at = wall_minus_monotonic + batch.claimed_at + batch.jobs[-1].due_in
            assert send_at >= fire_at - 0.001  # the clocks' rounding; never early
            assert send_at - fire_at < (ended - started) / 2
        finally:
            await store.release(batch)


async def test_concurrent_claims_are_disjoint_and_bounded_by_the_limit(
    db_url: str, db: Conn
) -> None:
    await insert_due(db, 500)
    async with opened_store(db_url, batch_size=100, concurrency=4) as store:
        batches = await asyncio.gather(*(store.claim() for _ in range(4)))
        ids = [job.id for batch in batches for job in batch.jobs]
        assert [len(batch.jobs) for batch in batches] == [100] * 4
        assert len(set(ids)) == 400
        for batch in batches:
            await store.release(batch)


async def test_settle_marks_published_dead_and_retrying_rows(db_url: str, db: Conn) -> None:
    await insert_due(db, 4)
    async with opened_store(db_url, max_attempts=2) as store:
        batch = await store.claim()
        outcomes = [
            PUBLISHED,
            Outcome(Delivery.REJECTED, "invalid_topic", "topic is empty"),
            Outcome(Delivery.FAILED, "broker_0x97", "quota exceeded"),
            Outcome(Delivery.NOT_SENT, "connection_lost", "gone"),
        ]
        settled = await store.settle(batch, outcomes)
        assert (settled.published, settled.dead, settled.retrying, settled.released) == (1, 1, 1, 1)
        cursor = await db.execute(
            "SELECT processed, processed_at IS NOT NULL, failed_at IS NOT NULL, attempts,"
            " last_error, next_attempt_at > now() FROM jobs ORDER BY id"
        )
        assert await cursor.fetchall() == [
            (True, True, False, 0, None, None),
            (False, False, True, 1, "topic is empty", None),
            (False, False, False, 1, "quota exceeded", True),
            (False, False, False, 0, None, None),
        ]
        # The retrying row is not claimable until its backoff ends; the released one is.
        again = await store.claim()
        assert [job.id for job in again.jobs] == [batch.jobs[3].id]
        await store.release(again)
        # Out of attempts: the second failure makes it dead.
        await db.execute("UPDATE jobs SET next_attempt_at = now() WHERE attempts = 1")
        third = await store.claim()
        failing = [Outcome(Delivery.FAILED, "broker_0x97", "again") for _ in third.jobs]
        assert (await store.settle(third, failing)).dead == 1


async def test_rows_published_before_a_lost_commit_are_marked_on_a_new_connection(
    db_url: str, db: Conn
) -> None:
    await insert_due(db, 5)
    async with opened_store(db_url) as store:
        batch = await store.claim()
        ids = [job.id for job in batch.jobs]
        await db.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND state = 'idle in transaction'"
        )
        # Meanwhile a producer reschedules one row and another replica claims another.
        await db.execute("UPDATE jobs SET fire_at = now() + interval '1h' WHERE id = %s", (ids[0],))
        async with await psycopg.AsyncConnection.connect(db_url) as other_replica:
            await other_replica.execute("SELECT FROM jobs WHERE id = %s FOR UPDATE", (ids[1],))
            outcomes = [PUBLISHED] * 4 + [Outcome(Delivery.NOT_SENT, "connection_lost", "gone")]
            settled = await store.settle(batch, outcomes)
        assert (settled.published, settled.released) == (2, 3)
        cursor = await db.execute("SELECT id FROM jobs WHERE processed ORDER BY id")
        assert [row[0] for row in await cursor.fetchall()] == ids[2:4]


async def test_rows_of_a_lost_commit_are_marked_when_a_long_outage_ends(
    db_url: str, db: Conn
) -> None:
    # A restart's shutdown checkpoint can keep the database away for many seconds; no
    # replica can claim the rows meanwhile, so their owner waits it out to mark them.
    await insert_due(db, 3)
    parts = urlsplit(db_url)
    async with proxy_to(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        proxied = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
        async with opened_store(proxied) as store:
            batch = await store.claim()
            await proxy.cut()
            settling = asyncio.create_task(store.settle(batch, [PUBLISHED] * 3), name="settle")
            # The outage: longer than the 5 s this once allowed, and the settle still tries.
            done, _ = await asyncio.wait({settling}, timeout=6)
            assert not done, "the settle gave up while the database was away"
            await proxy.open()
            settled = await asyncio.wait_for(settling, 10)
    assert (settled.published, settled.commit_lost) == (3, True)
    cursor = await db.execute("SELECT count(*) FROM jobs WHERE processed")
    assert await cursor.fetchone() == (3,)


async def test_partition_takes_own_rows_and_overdue_rows_of_others(db_url: str, db: Conn) -> None:
    await insert_due(db, 10, offset="-1 s")
    await insert_due(db, 10, topic="old", offset="-1 hour")
    async with opened_store(db_url, consumer_count=2, consumer_index=1, takeover_delay=60) as store:
        batch = await store.claim()
        recent = [job for job in batch.jobs if job.topic.startswith("t/")]
        overdue = [job for job in batch.jobs if job.topic.startswith("old/")]
        assert recent
        assert all(job.id % 2 == 1 for job in recent)
        assert len(recent) == 5
        assert len(overdue) == 10, "rows overdue past the takeover delay go to any replica"
        await store.release(batch)


async def test_the_lane_index_splits_rows_as_the_lane_claim_does(db: Conn) -> None:
    cursor = await db.execute(
        "SELECT indexname, indexdef FROM pg_indexes"
        " WHERE tablename = 'jobs' AND indexname LIKE 'jobs_pending_%%'"
    )
    indexes: dict[str, str] = dict(await cursor.fetchall())
    # PostgreSQL prints the expression back as ((id % (16)::bigint)).
    modulus = re.search(r"\(\(id % \((\d+)\)::bigint\)\)", indexes["jobs_pending_lane_idx"])
    assert modulus is not None, indexes["jobs_pending_lane_idx"]
    assert int(modulus.group(1)) == queries.LANES
    assert f"AND id %% {queries.LANES} = %(lane)s::bigint" in queries.CLAIM_DUE_JOBS_IN_LANE
    # Both partial indexes cover exactly the rows the claims call pending.
    for definition in indexes.values():
        assert definition.endswith("WHERE ((NOT processed) AND (failed_at IS NULL))"), definition


@pytest.mark.parametrize(
    ("statement", "partitioned"),
    [("CLAIM_DUE_JOBS", True), ("CLAIM_DUE_JOBS_IN_LANE", False), ("NEXT_WAKE", True)],
)
def test_each_claim_statement_holds_the_shared_predicates(
    statement: str, partitioned: bool
) -> None:
    text = getattr(queries, statement)
    assert queries.PENDING in text
    assert (queries.OWN_PARTITION in text) is partitioned
