"""The retry statement on real PostgreSQL: backoff bounds, and rows of any attempt count."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from jobpub.db.claim import ClaimConfig, Claimer
from jobpub.db.complete import Completer, RetryPolicy
from jobpub.db.database import Database, DatabaseConfig
from jobpub.metrics import Metrics
from jobpub.models import Delivery, Outcome

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

REFUSED = Outcome(Delivery.FAILED, "broker_0x97", "quota exceeded")


@contextlib.asynccontextmanager
async def claimer_and_completer(
    db_url: str, policy: RetryPolicy
) -> AsyncIterator[tuple[Claimer, Completer]]:
    database = Database(DatabaseConfig(db_url, pool_size=1))
    claim = ClaimConfig(
        limit=10,
        lookahead=0,
        consumer_count=1,
        consumer_index=0,
        takeover_delay=30,
        max_payload_bytes=256 * 1024,
        batch_max_bytes=4 * 1024 * 1024,
    )
    await database.open()
    try:
        yield Claimer(database, claim, Metrics()), Completer(database, policy)
    finally:
        await database.close()


async def fail_every_due_row(db_url: str, policy: RetryPolicy) -> tuple[int, int]:
    """Claim the due rows, have the broker refuse each; (dead, retrying)."""
    async with claimer_and_completer(db_url, policy) as (claimer, completer):
        batch = await claimer.claim()
        settled = await completer.settle(batch, [REFUSED] * len(batch.jobs))
    return settled.dead, settled.retrying


@pytest.mark.parametrize("attempts", [0, 3, 1023, 1024, 2000, 2_000_000])
async def test_a_retry_waits_within_the_capped_backoff_whatever_the_attempt_count(
    db_url: str, db: Conn, attempts: int
) -> None:
    # 2 ^ attempts overflows a double from 1024 on; the settle must not fail on it.
    await db.execute("INSERT INTO jobs (topic, payload, attempts) VALUES ('t/x', 'p', %s)",
                     (attempts,))  # fmt: skip
    policy = RetryPolicy(max_attempts=10_000_000, backoff=1.0, backoff_max=3600.0)
    before = await database_clock(db)
    assert await fail_every_due_row(db_url, policy) == (0, 1)
    after = await database_clock(db)
    cursor = await db.execute(
        "SELECT attempts, extract(epoch FROM next_attempt_at - %(before)s),"
        " extract(epoch FROM next_attempt_at - %(after)s) FROM jobs",
        {"before": before, "after": after},
    )
    [(counted, since_before, since_after)] = await cursor.fetchall()
    assert counted == attempts + 1
    ceiling = policy.ceiling(attempts + 1)
    assert float(since_before) >= 0.5 * ceiling
    assert float(since_after) <= ceiling


async def database_clock(db: Conn) -> object:
    cursor = await db.execute("SELECT clock_timestamp()")
    row = await cursor.fetchone()
    assert row is not None
    return row[0]


async def test_a_row_past_its_attempts_goes_dead_even_at_2000(db_url: str, db: Conn) -> None:
    await db.execute("INSERT INTO jobs (topic, payload, attempts) VALUES ('t/x', 'p', 2000)")
    policy = RetryPolicy(max_attempts=25, backoff=1.0, backoff_max=3600.0)
    assert await fail_every_due_row(db_url, policy) == (1, 0)
    cursor = await db.execute("SELECT attempts, failed_at IS NOT NULL, last_error FROM jobs")
    assert await cursor.fetchall() == [(2001, True, "quota exceeded")]
