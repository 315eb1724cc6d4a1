"""jobpub_replicas and the fleet-wide rate limit, on real PostgreSQL and a real broker."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import uuid
from typing import Any

import psycopg

from jobpub.db.database import Database, DatabaseConfig
from jobpub.db.replicas import ReplicaRecord, ReplicaRegistry
from jobpub.ratelimit import BURST_SECONDS
from testbed.broker import Broker
from testbed.daemon import make_settings, running
from testbed.subscriber import Subscriber
from testbed.waiting import eventually
from tests.integration.test_security import login_role

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


def record(stale_after: float = 15.0) -> ReplicaRecord:
    return ReplicaRecord(str(uuid.uuid4()), "host-a", "9.9", "0/1", stale_after)


async def test_replicas_register_count_each_other_and_leave(db_url: str, db: Conn) -> None:
    database = Database(DatabaseConfig(db_url, pool_size=1))
    await database.open()
    try:
        first, second = ReplicaRegistry(database, record()), ReplicaRegistry(database, record())
        assert await first.beat() == 1
        assert await second.beat() == 2
        cursor = await db.execute("SELECT started_at, heartbeat_at FROM jobpub_replicas")
        before = await cursor.fetchall()
        assert await first.beat() == 2  # a heartbeat, not a new row
        cursor = await db.execute("SELECT started_at, heartbeat_at FROM jobpub_replicas")
        after = await cursor.fetchall()
        assert sorted(row[0] for row in after) == sorted(row[0] for row in before)
        await second.leave()
        assert await first.beat() == 1
    finally:
        await database.close()


async def test_a_silent_replica_is_removed_by_the_others_and_comes_back_when_it_beats(
    db_url: str, db: Conn
) -> None:
    database = Database(DatabaseConfig(db_url, pool_size=1))
    await database.open()
    try:
        live, frozen = ReplicaRegistry(database, record(5)), ReplicaRegistry(database, record(5))
        await frozen.beat()
        assert await live.beat() == 2
        await db.execute(
            "UPDATE jobpub_replicas SET heartbeat_at = now() - interval '6 s' "
            "WHERE id <> (SELECT id FROM jobpub_replicas ORDER BY heartbeat_at DESC LIMIT 1)"
        )
        assert await live.beat() == 1  # the silent one is not counted, and is gone
        cursor = await db.execute("SELECT count(*) FROM jobpub_replicas")
        assert await cursor.fetchone() == (1,)
        assert await frozen.beat() == 2  # thawed: registered again
    finally:
        await database.close()


async def test_the_daemon_registers_as_the_daemon_role_and_leaves_at_a_clean_stop(
    db_url: str, db: Conn, broker: Broker
) -> None:
    async with login_role(db, db_url, "IN ROLE jobpub_daemon") as (_, as_daemon):
        settings = make_settings(as_daemon, broker.url, consumer_count=2, consumer_index=1)
        async with running(settings):
            await eventually(lambda: _replica_rows(db, 1), 10, "the replica registered")
            cursor = await db.execute("SELECT host, version, partition FROM jobpub_replicas")
            row = await cursor.fetchone()
            assert row is not None
            assert row[1:] == ("0.1.0", "1/2")
        assert await _replica_rows(db, 0)


async def _replica_rows(db: Conn, count: int) -> bool:
    cursor = await db.execute("SELECT count(*) FROM jobpub_replicas")
    row = await cursor.fetchone()
    return row is not None and row[0] == count


async def test_two_replicas_share_the_rate_limit_and_publish_every_row_late_not_dropped(
    db_url: str, db: Conn, broker: Broker, subscriber: Subscriber, info_logs: io.StringIO
) -> None:
    rate, rows = 300.0, 900
    settings = make_settings(db_url, broker.url, rate_limit=rate, heartbeat_interval=0.2,
                             replica_stale_after=2)  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        metrics = [await stack.enter_async_context(running(settings)) for _ in range(2)]
        await eventually(lambda: _replica_rows(db, 2), 10, "both replicas registered")
        await eventually(lambda: _shares(info_logs, rate / 2) == 2, 10, "both took half")
        await db.execute(
            "INSERT INTO jobs (topic, payload) SELECT %s || i, 'p' FROM generate_series(1, %s) i",
            (subscriber.topic("r/"), rows),
        )
        await asyncio.to_thread(subscriber.wait_for_jobs, rows, 60)
        await eventually(lambda: _all_processed(db), 10, "every row marked")
        cursor = await db.execute("SELECT extract(epoch FROM max(processed_at) - min(fire_at)) "
                                  "FROM jobs")  # fmt: skip
        row = await cursor.fetchone()
    assert row is not None
    elapsed = float(row[0])
    # Unthrottled, 900 rows take well under 0.2 s here. At 300/s they cannot take less
    # than (900 - what each replica saved while idle) / 300 = 2.75 s; only this lower
    # bound is asserted: a loaded machine may be slower, never faster.
    assert elapsed >= (rows - 2 * (rate / 2) * BURST_SECONDS) / rate * 0.95, elapsed
    for replica in metrics:
        throttled = replica.registry.get_sample_value("jobpub_throttled_seconds_total")
        assert throttled is not None
        assert throttled > 0


async def _all_processed(db: Conn) -> bool:
    cursor = await db.execute("SELECT bool_and(processed) FROM jobs")
    row = await cursor.fetchone()
    return row is not None and row[0] is True


def _shares(logs: io.StringIO, share: float) -> int:
    """How many replicas logged taking `share` of the rate limit."""
    events = (json.loads(line) for line in logs.getvalue().splitlines() if line.startswith("{"))
    return sum(
        1
        for event in events
        if event.get("event") == "replicas_counted" and event.get("rate_share_per_s") == share
    )
