"""jobpub.client, sync and async, on real PostgreSQL; one job published by a real replica
to a real broker and read back with its MQTT 5 properties."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from jobpub import client
from testbed.broker import Broker
from testbed.daemon import make_settings, running
from testbed.waiting import wait_until
from tests.integration.test_job_columns import PropertySubscriber

SyncConn = psycopg.Connection[tuple[Any, ...]]
AsyncConn = psycopg.AsyncConnection[tuple[Any, ...]]


@pytest.fixture
def conn(db_url: str) -> Iterator[SyncConn]:
    """A connection in the default (transaction) mode: the test commits or not."""
    with psycopg.connect(db_url) as connection:
        yield connection


def row(db_url: str, sql: str, params: Any = None) -> tuple[Any, ...] | None:
    """Read on a connection of its own: sees only what was committed."""
    with psycopg.connect(db_url) as other:
        return other.execute(sql, params).fetchone()


def published(db_url: str, job_id: int) -> None:
    """Settle a row as a replica would have published it."""
    with psycopg.connect(db_url) as other:
        other.execute(
            "UPDATE jobs SET processed = true, processed_at = now() WHERE id = %s", (job_id,)
        )


# Sync


def test_add_runs_in_the_callers_transaction(db_url: str, conn: SyncConn) -> None:
    # A transaction open for a while before the add: its now() (created_at's default)
    # lies behind the clock by then.
    conn.execute("SELECT 1")
    wait_until(
        lambda: (
            conn.execute("SELECT clock_timestamp() - now() > interval '300 ms'").fetchone()
            == (True,)
        ),
        10,
        "the transaction to age",
    )
    kept = client.add(conn, "a/kept", "hello", delay=timedelta(seconds=90))
    (after,) = conn.execute("SELECT clock_timestamp()").fetchone() or (None,)
    assert row(db_url, "SELECT count(*) FROM jobs") == (0,), "nothing committed by add"
    conn.commit()
    assert row(db_url, "SELECT topic, payload, qos, retain, state FROM jobs WHERE id = %s",
               (kept,)) == ("a/kept", "hello", 1, False, "pending")  # fmt: skip
    # The delay counts from the add's own statement, not from the transaction's start.
    found = row(db_url, "SELECT fire_at, created_at FROM jobs WHERE id = %s", (kept,))
    assert found is not None
    fire_at, created_at = found
    assert fire_at - created_at >= timedelta(seconds=90.3)
    assert fire_at <= after + timedelta(seconds=90)
    dropped = client.add(conn, "a/dropped", "never")
    conn.rollback()
    assert row(db_url, "SELECT count(*) FROM jobs WHERE id = %s", (dropped,)) == (0,)


def test_add_at_a_time_with_every_option(db_url: str, conn: SyncConn) -> None:
    at = datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC)
    expires = at + timedelta(hours=1)
    properties = client.Properties(
        content_type="application/json",
        user_properties={"site": "north", "n": "7"},
        response_topic="replies/valve/7",
        correlation_data=b"\x00\xff\x10",
    )
    job_id = client.add(
        conn, "devices/7/valve", '{"open": true}', at=at, qos=2, retain=True,
        expires_at=expires, dedupe_key="valve-7-open", properties=properties,
    )  # fmt: skip
    conn.commit()
    assert row(
        db_url,
        "SELECT fire_at, qos, retain, expires_at, dedupe_key, content_type, user_properties,"
        " response_topic, correlation_data, payload_bytes FROM jobs WHERE id = %s",
        (job_id,),
    ) == (
        at, 2, True, expires, "valve-7-open", "application/json", {"site": "north", "n": "7"},
        "replies/valve/7", b"\x00\xff\x10", None,
    )  # fmt: skip


def test_a_bytes_payload_goes_in_payload_bytes(db_url: str, conn: SyncConn) -> None:
    raw = bytes(range(256))
    job_id = client.add(conn, "raw/blob", raw, expires_in=timedelta(minutes=10))
    conn.commit()
    assert row(
        db_url,
        "SELECT payload, payload_bytes, expires_at - fire_at FROM jobs WHERE id = %s",
        (job_id,),
    ) == ("", raw, timedelta(minutes=10))


def test_a_dedupe_key_returns_the_first_rows_id(db_url: str, conn: SyncConn) -> None:
    first = client.add(conn, "orders/17", "first", dedupe_key="order-17")
    again = client.add(conn, "orders/17", "retry", dedupe_key="order-17")  # same transaction
    conn.commit()
    assert again == first
    later = client.add(conn, "orders/17", "later retry", dedupe_key="order-17")
    conn.commit()
    assert later == first
    published(db_url, first)  # a kept row holds its key whatever its state
    assert client.add(conn, "orders/17", "after it went out", dedupe_key="order-17") == first
    conn.commit()
    assert row(db_url, "SELECT count(*), min(payload) FROM jobs") == (1, "first")
    other = client.add(conn, "orders/18", "x", dedupe_key="order-18")
    assert other != first


def wait_for_a_lock_wait(db_url: str) -> None:
    """Until a session of this database waits on a lock (pg_stat_activity)."""
    with psycopg.connect(db_url, autocommit=True) as watcher:
        waiting = (
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        wait_until(lambda: watcher.execute(waiting).fetchone() == (1,), 10, "a lock wait")


@pytest.mark.parametrize("first_commits", [True, False], ids=["commits", "rolls-back"])
def test_a_concurrent_duplicate_waits_for_the_first(
    db_url: str, conn: SyncConn, first_commits: bool
) -> None:
    """The second add returns the first's id once it commits, or inserts once it rolls back."""
    first = client.add(conn, "orders/1", "first", dedupe_key="order-1")  # not committed yet
    answer: list[int] = []

    def second_producer() -> None:
        with psycopg.connect(db_url) as other:
            answer.append(client.add(other, "orders/1", "second", dedupe_key="order-1"))

    thread = threading.Thread(target=second_producer, name="second-producer")
    thread.start()
    wait_for_a_lock_wait(db_url)  # the second INSERT waits on the first's uncommitted key
    if first_commits:
        conn.commit()
    else:
        conn.rollback()
    thread.join(10)
    assert len(answer) == 1
    kept = row(db_url, "SELECT id, payload FROM jobs")
    assert kept == ((first, "first") if first_commits else (answer[0], "second"))
    assert (answer[0] == first) is first_commits
    assert row(db_url, "SELECT count(*) FROM jobs") == (1,)


def test_cancel_and_reschedule_a_pending_job(db_url: str, conn: SyncConn) -> None:
    job_id = client.add(conn, "a/b", "x", delay=3600)
    conn.execute("UPDATE jobs SET next_attempt_at = now() + interval '1 hour' WHERE id = %s",
                 (job_id,))  # fmt: skip
    conn.commit()
    at = datetime(2030, 1, 1, tzinfo=UTC)
    client.reschedule(conn, job_id, at=at)
    conn.commit()
    assert row(db_url, "SELECT fire_at, next_attempt_at FROM jobs WHERE id = %s", (job_id,)) == (
        at, None,
    )  # fmt: skip
    client.reschedule(conn, job_id, delay=timedelta(seconds=5))
    # From the statement's time: past the transaction's now(), not past the clock's.
    assert conn.execute(
        "SELECT fire_at > now() + interval '5 s', fire_at <= clock_timestamp() + interval '5 s'"
        " FROM jobs WHERE id = %s",
        (job_id,),
    ).fetchone() == (True, True)
    conn.commit()
    client.cancel(conn, job_id)
    assert row(db_url, "SELECT count(*) FROM jobs") == (1,), "not before the commit"
    conn.commit()
    assert row(db_url, "SELECT count(*) FROM jobs") == (0,)


def test_not_found_and_not_pending_leave_the_transaction_usable(
    db_url: str, conn: SyncConn
) -> None:
    job_id = client.add(conn, "a/b", "x")
    conn.commit()
    published(db_url, job_id)
    with pytest.raises(client.JobNotFound, match="no job has id 999"):
        client.cancel(conn, 999)
    with pytest.raises(client.JobNotFound):
        client.reschedule(conn, 999, delay=1)
    with pytest.raises(client.JobConflict, match="is published, no longer pending") as refused:
        client.cancel(conn, job_id)
    assert refused.value.state == "published"
    with pytest.raises(client.JobConflict, match="not rescheduled"):
        client.reschedule(conn, job_id, delay=1)
    assert conn.execute("SELECT 1").fetchone() == (1,), "the transaction goes on"
    with psycopg.connect(db_url) as other:
        other.execute("UPDATE jobs SET processed = false, failed_at = now() WHERE id = %s",
                      (job_id,))  # fmt: skip
    with pytest.raises(client.JobConflict, match="is dead") as dead:
        client.cancel(conn, job_id)
    assert dead.value.state == "dead"


def test_an_expired_job_is_a_conflict_that_says_expired(db_url: str, conn: SyncConn) -> None:
    job_id = client.add(conn, "a/b", "x", expires_in=timedelta(minutes=1))
    conn.commit()
    with psycopg.connect(db_url) as other:  # settled as the replicas' expiry sweep does
        other.execute(
            "UPDATE jobs SET processed = true, processed_at = now(), expired_at = now()"
            " WHERE id = %s",
            (job_id,),
        )
    with pytest.raises(client.JobConflict, match="is expired, no longer pending") as expired:
        client.cancel(conn, job_id)
    assert expired.value.state == "expired"
    with pytest.raises(client.JobConflict, match="is expired") as again:
        client.reschedule(conn, job_id, delay=1)
    assert again.value.state == "expired"


def test_a_job_a_replica_holds_is_a_conflict_at_once(db_url: str, conn: SyncConn) -> None:
    job_id = client.add(conn, "a/b", "x")
    conn.commit()
    with psycopg.connect(db_url) as replica:
        # A claim holds its rows locked until it has published them.
        replica.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
        locked = "locked by another transaction \\(a replica publishing it, or another writer\\)"
        with pytest.raises(client.JobConflict, match=locked) as held:
            client.cancel(conn, job_id)
        assert held.value.state == "pending"
        with pytest.raises(client.JobConflict, match=locked):
            client.reschedule(conn, job_id, delay=10)
        replica.rollback()
    client.cancel(conn, job_id)  # free again
    conn.commit()


def test_values_the_table_refuses(conn: SyncConn) -> None:
    with pytest.raises(client.Refused, match="jobs_topic_no_wildcards"):
        client.add(conn, "devices/+/valve", "x")
    conn.rollback()  # a refused INSERT aborts the transaction, as any failed statement
    with pytest.raises(client.Refused, match="jobs_response_topic_no_wildcards"):
        client.add(conn, "a/b", "x", properties=client.Properties(response_topic="r/#"))
    conn.rollback()


def test_an_expiry_not_after_the_firing_time_is_refused(db_url: str, conn: SyncConn) -> None:
    # Only the database knows when "in an hour" is: the statement refuses it.
    soon = datetime.now(UTC) + timedelta(minutes=10)
    with pytest.raises(client.Refused, match="would expire before it is published"):
        client.add(conn, "a/b", "x", delay=timedelta(hours=1), expires_at=soon)
    conn.rollback()
    with pytest.raises(client.Refused, match="would expire before it is published"):
        client.add(conn, "a/b", "x", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    conn.rollback()
    assert row(db_url, "SELECT count(*) FROM jobs") == (0,)
    # expires_in counts from the firing time, as a schedule's expire_after does.
    job_id = client.add(conn, "a/b", "x", delay=timedelta(hours=2), expires_in=600)
    conn.commit()
    assert row(db_url, "SELECT expires_at - fire_at FROM jobs WHERE id = %s", (job_id,)) == (
        timedelta(minutes=10),
    )


def test_a_callers_row_factory_is_left_alone(db_url: str) -> None:
    with psycopg.connect(db_url, row_factory=dict_row) as conn:
        job_id = client.add(conn, "a/dict", "x", dedupe_key="dict-1")
        assert client.add(conn, "a/dict", "again", dedupe_key="dict-1") == job_id
        client.reschedule(conn, job_id, delay=60)
        with pytest.raises(client.JobNotFound):
            client.cancel(conn, job_id + 1)
        client.cancel(conn, job_id)
        conn.commit()
        assert conn.execute("SELECT count(*) AS n FROM jobs").fetchone() == {"n": 0}


async def test_an_async_callers_row_factory_is_left_alone(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, row_factory=dict_row) as aconn:
        job_id = await client.add_async(aconn, "a/dict", "x", dedupe_key="dict-1")
        assert await client.add_async(aconn, "a/dict", "again", dedupe_key="dict-1") == job_id
        await client.reschedule_async(aconn, job_id, delay=60)
        with pytest.raises(client.JobNotFound):
            await client.cancel_async(aconn, job_id + 1)
        await client.cancel_async(aconn, job_id)
        await aconn.commit()


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"at": datetime(2030, 1, 1, tzinfo=UTC), "delay": 5}, ValueError, "not both"),
        ({"at": datetime(2030, 1, 1)}, ValueError, "must carry a time zone"),
        ({"delay": -1}, ValueError, "must not be negative"),
        ({"qos": 3}, ValueError, "qos must be 0, 1 or 2"),
        ({"payload": 42}, TypeError, "payload must be str or bytes"),
        ({"expires_at": datetime.now(UTC), "expires_in": 5}, ValueError, "not both"),
        ({"expires_at": datetime(2030, 1, 1)}, ValueError, "time zone"),
        ({"delay": float("nan")}, ValueError, "delay must be a finite number"),
        ({"delay": float("inf")}, ValueError, "delay must be a finite number"),
        ({"expires_in": float("nan")}, ValueError, "expires_in must be a finite number"),
        ({"expires_in": float("inf")}, ValueError, "expires_in must be a finite number"),
        ({"expires_in": 0}, ValueError, "expires_in must be positive"),
        (
            {
                "at": datetime(2030, 1, 1, tzinfo=UTC),
                "expires_at": datetime(2030, 1, 1, tzinfo=UTC),
            },
            ValueError,
            "would expire before it is published",
        ),
        (
            {"properties": client.Properties(user_properties={"n": 7})},  # type: ignore[dict-item]
            ValueError,
            "strings to strings",
        ),
    ],
)
def test_arguments_checked_before_any_sql(
    conn: SyncConn, arguments: dict[str, Any], error: type[Exception], message: str
) -> None:
    payload = arguments.pop("payload", "x")
    with pytest.raises(error, match=message):
        client.add(conn, "a/b", payload, **arguments)
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, "no SQL ran"


def test_reschedule_needs_a_time(conn: SyncConn) -> None:
    with pytest.raises(ValueError, match="give `at` or `delay`"):
        client.reschedule(conn, 1)
    with pytest.raises(ValueError, match="delay must be a finite number"):
        client.reschedule(conn, 1, delay=float("nan"))
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, "no SQL ran"


# Async


async def test_async_add_cancel_reschedule_and_dedupe(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url) as aconn:
        first = await client.add_async(aconn, "a/async", b"\x00\x01", dedupe_key="k", delay=60)
        assert await client.add_async(aconn, "a/async", "retry", dedupe_key="k") == first
        other = await client.add_async(
            aconn, "a/async", "text", properties=client.Properties(content_type="text/plain")
        )
        assert row(db_url, "SELECT count(*) FROM jobs") == (0,)
        await aconn.commit()
        at = datetime(2030, 6, 1, 12, tzinfo=UTC)
        await client.reschedule_async(aconn, first, at=at)
        await client.cancel_async(aconn, other)
        await aconn.commit()
        with pytest.raises(client.JobNotFound):
            await client.cancel_async(aconn, other)
        with pytest.raises(client.JobNotFound):
            await client.reschedule_async(aconn, other, delay=1)
        published(db_url, first)
        with pytest.raises(client.JobConflict, match="no longer pending"):
            await client.reschedule_async(aconn, first, delay=timedelta(seconds=1))
        with pytest.raises(client.Refused):
            await client.add_async(aconn, "", "empty topic")
        await aconn.rollback()
    assert row(db_url, "SELECT payload_bytes, fire_at, dedupe_key FROM jobs") == (
        b"\x00\x01", at, "k",
    )  # fmt: skip


async def test_async_on_an_autocommit_connection_each_call_commits(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as aconn:
        job_id = await client.add_async(aconn, "a/auto", "x")
        assert row(db_url, "SELECT count(*) FROM jobs WHERE id = %s", (job_id,)) == (1,)
        await client.cancel_async(aconn, job_id)
        assert row(db_url, "SELECT count(*) FROM jobs") == (0,)


# End to end: a client's row, a real replica, a real broker.


async def test_a_row_added_by_the_client_is_published_with_its_properties(
    db_url: str, broker: Broker
) -> None:
    props = PropertySubscriber(broker.port)
    with props:
        async with await psycopg.AsyncConnection.connect(db_url) as aconn:
            text_id = await client.add_async(
                aconn, props.topic("text"), '{"open": true}', qos=1,
                expires_in=timedelta(hours=1),
                properties=client.Properties(
                    content_type="application/json",
                    user_properties={"site": "north"},
                    response_topic="replies/valve/7",
                    correlation_data=b"\x00\xff",
                ),
            )  # fmt: skip
            await client.add_async(aconn, props.topic("raw"), bytes(range(256)))
            await aconn.commit()
        async with running(make_settings(db_url, broker.url)):
            seen = await props.properties_of(2)
    text, raw = seen["text"], seen["raw"]
    assert text.payload == b'{"open": true}'
    assert text.content_type == "application/json"
    assert text.response_topic == "replies/valve/7"
    assert text.correlation_data == b"\x00\xff"
    assert text.payload_format == 1
    assert ("jobpub-job-id", str(text_id)) in text.user_properties
    assert ("site", "north") in text.user_properties
    assert text.expiry_interval is not None
    assert 3500 <= text.expiry_interval <= 3600
    assert raw.payload == bytes(range(256))
    assert row(db_url, "SELECT array_agg(DISTINCT state) FROM jobs") == (["published"],)
