"""jobpub through a real PgBouncer in transaction mode (Debian's package)."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator

import psycopg
import pytest

from jobpub import migrations
from jobpub.db.admin import migrate
from testbed.broker import Broker
from testbed.daemon import make_settings, running
from testbed.pgbouncer import PgBouncer, start_pgbouncer
from testbed.subscriber import Subscriber
from testbed.waiting import eventually, logged


@pytest.fixture(scope="module")
def pgbouncer() -> Iterator[PgBouncer]:
    with start_pgbouncer(pool_mode="transaction") as running_bouncer:
        yield running_bouncer


async def test_concurrent_migrations_through_transaction_pooling_serialise(
    empty_db_url: str, pgbouncer: PgBouncer
) -> None:
    url = pgbouncer.url(empty_db_url)
    scripts = migrations.scripts()
    applied = await asyncio.gather(*(migrate(url, scripts) for _ in range(5)))
    # Each version applied by exactly one run, all of them by some run.
    every = [version for run in applied for version in run]
    assert sorted(every) == [version for version, _, _ in scripts]
    assert await migrate(url, scripts) == []
    async with await psycopg.AsyncConnection.connect(empty_db_url) as direct:
        cursor = await direct.execute(
            "SELECT count(*), count(DISTINCT version) FROM jobpub_migrations"
        )
        assert await cursor.fetchone() == (len(scripts), len(scripts))
        # No advisory lock was left behind on a pooled server connection.
        cursor = await direct.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert await cursor.fetchone() == (0,)


async def test_without_listen_a_replica_polls_and_says_so_once(
    db_url: str,
    pgbouncer: PgBouncer,
    broker: Broker,
    subscriber: Subscriber,
    info_logs: io.StringIO,
) -> None:
    settings = make_settings(
        pgbouncer.url(db_url), broker.url, transaction_pooling=True, poll_interval=0.5
    )
    async with running(settings):
        await eventually(logged(info_logs, '"broker_connected"'), 20, "the broker connection")
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as direct:
            for round_ in range(3):  # later rows are found by polling, not by a notification
                await direct.execute(
                    "INSERT INTO jobs (topic, payload) VALUES (%s, %s)",
                    (subscriber.topic(str(round_)), str(round_)),
                )
                await asyncio.to_thread(subscriber.wait_for, round_ + 1, 10)
            cursor = await direct.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query ILIKE 'LISTEN%%'"
            )
            assert await cursor.fetchone() == (0,), "a server connection ran LISTEN"
    text = info_logs.getvalue()
    assert text.count('"listen_disabled"') == 1
    for failure in ('"listen_failed"', '"claim_failed"', '"batch_settle_failed"'):
        assert failure not in text
