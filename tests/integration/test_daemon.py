"""The whole daemon in-process, against real PostgreSQL and a real Mosquitto."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from jobpub.metrics import Metrics
from testbed.broker import Broker, free_port
from testbed.daemon import make_settings, running
from testbed.proxy import proxy_to
from testbed.subscriber import Subscriber
from testbed.waiting import eventually

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


async def http_get(port: int, path: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except OSError as error:
            return 0, str(error)

    return await asyncio.to_thread(fetch)


async def count(db: Conn, where: str) -> int:
    cursor = await db.execute(f"SELECT count(*) FROM jobs WHERE {where}")
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_due_jobs_publish_on_time_and_bad_rows_end_dead(
    db_url: str, db: Conn, broker: Broker, subscriber: Subscriber
) -> None:
    topic = subscriber.topic
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at, qos, retain) VALUES "
        "(%s, 'days late', now() - interval '3 days', 1, false),"
        "(%s, 'qos0', now() - interval '1 s', 0, false),"
        "(%s, 'qos2', now() - interval '1 s', 2, false),"
        "('$SYS/forbidden', 'refused by the broker', now() - interval '1 s', 1, false),"
        "(%s, repeat('x', 2000000), now() - interval '1 s', 1, false)",
        (topic("late"), topic("q0"), topic("q2"), topic("huge")),
    )
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at) "
        "SELECT %s || i, 'soon ' || i, now() + i * interval '200 ms' FROM generate_series(1, 5) i",
        (topic("soon/"),),
    )
    port = free_port()
    # The 2 MB row is for the broker's packet limit (1 MiB) to refuse: let the claim read it.
    settings = make_settings(db_url, broker.url, http_port=port, max_payload_bytes=4 << 20)
    async with running(settings):
        received = await asyncio.to_thread(subscriber.wait_for, 8, 20)
        await eventually(lambda: _settled(db), 10, "every row settled")
        assert (await http_get(port, "/readyz"))[0] == 200
        assert (await http_get(port, "/healthz"))[0] == 200
        status, metrics = await http_get(port, "/metrics")
    assert status == 200
    assert "jobpub_jobs_published_total 8.0" in metrics
    assert 'jobpub_publish_failures_total{reason="packet_too_large"} 1.0' in metrics
    assert 'jobpub_publish_failures_total{reason="broker_0x87"} 1.0' in metrics
    assert "jobpub_jobs_dead_total 2.0" in metrics

    assert sorted(m.payload.decode()[:9] for m in received) == sorted(
        ["days late", "qos0", "qos2", *(f"soon {i}" for i in range(1, 6))]
    )
    assert {m.qos for m in received if m.topic == topic("q2")} == {2}
    cursor = await db.execute("SELECT id, fire_at FROM jobs")
    fire_at = {row[0]: row[1].timestamp() for row in await cursor.fetchall()}
    early = [m for m in received if m.arrived_at < fire_at[m.job_id or 0]]
    assert not early, f"published before fire_at: {early}"

    cursor = await db.execute(
        "SELECT topic, attempts, last_error FROM jobs WHERE failed_at IS NOT NULL ORDER BY id"
    )
    dead = await cursor.fetchall()
    assert [(row[0], row[1]) for row in dead] == [("$SYS/forbidden", 1), (topic("huge"), 1)]
    assert "not authorized" in dead[0][2]
    assert "the broker accepts at most 1048576" in dead[1][2]


async def _settled(db: Conn) -> bool:
    return await count(db, "NOT processed AND failed_at IS NULL") == 0


async def test_future_jobs_wait_for_their_time_then_fire(
    db_url: str, db: Conn, broker: Broker, subscriber: Subscriber
) -> None:
    async with running(make_settings(db_url, broker.url, poll_interval=30)) as metrics:
        # Idle after its first claim: now only NOTIFY and the next-job timer can wake it.
        await eventually(
            lambda: "jobpub_database_up 1.0" in metrics.render().decode(), 10, "a first claim"
        )
        await db.execute(
            "INSERT INTO jobs (topic, payload, fire_at) "
            "VALUES (%s, 'later', now() + interval '1.5 s')",
            (subscriber.topic("later"),),
        )
        [message] = await asyncio.to_thread(subscriber.wait_for, 1, 10)
    cursor = await db.execute("SELECT extract(epoch FROM fire_at) FROM jobs")
    row = await cursor.fetchone()
    assert row is not None
    assert message.arrived_at >= float(row[0])
    assert message.arrived_at - float(row[0]) < 1.0, "fired by timer, not by the 30 s poll"


async def test_broker_down_at_start_and_lost_while_running(
    db_url: str, db: Conn, own_broker: Broker
) -> None:
    own_broker.stop()
    port = free_port()
    async with running(make_settings(db_url, own_broker.url, http_port=port)):
        await db.execute(
            "INSERT INTO jobs (topic, payload) "
            "SELECT 'outage/' || i, 'x' FROM generate_series(1, 100) i"
        )
        await eventually(lambda: _status_is(port, 503), 10, "/readyz not ready")
        assert "broker not connected" in (await http_get(port, "/readyz"))[1]
        own_broker.start()
        await eventually(lambda: _settled(db), 20, "jobs published once the broker is up")
        own_broker.stop(hard=True)
        await db.execute(
            "INSERT INTO jobs (topic, payload) "
            "SELECT 'outage2/' || i, 'x' FROM generate_series(1, 100) i"
        )
        await eventually(lambda: _status_is(port, 503), 10, "/readyz not ready")
        own_broker.start()
        await eventually(lambda: _settled(db), 30, "jobs published after the broker returns")
        await eventually(lambda: _status_is(port, 200), 10, "/readyz ready again")
    assert await count(db, "processed") == 200


async def test_database_down_at_start_and_lost_while_running(
    db_url: str, db: Conn, broker: Broker, subscriber: Subscriber
) -> None:
    parts = urlsplit(db_url)
    port = free_port()
    async with proxy_to(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        await proxy.cut()
        proxied = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
        await db.execute(
            "INSERT INTO jobs (topic, payload) SELECT %s || i, 'x' FROM generate_series(1, 50) i",
            (subscriber.topic("db/"),),
        )
        async with running(make_settings(proxied, broker.url, http_port=port)):
            await eventually(lambda: _status_is(port, 503), 10, "/readyz not ready")
            assert "database not connected" in (await http_get(port, "/readyz"))[1]
            await proxy.open()
            await eventually(lambda: _settled(db), 30, "jobs published once the database is up")
            await proxy.cut()
            await db.execute(
                "INSERT INTO jobs (topic, payload) "
                "SELECT %s || i, 'x' FROM generate_series(1, 50) i",
                (subscriber.topic("db2/"),),
            )
            await eventually(lambda: _status_is(port, 503), 15, "/readyz not ready")
            await proxy.open()
            await eventually(lambda: _settled(db), 30, "published after the database returns")
    received = {m.topic for m in subscriber.snapshot()}
    assert len(received) == 100


async def _status_is(port: int, status: int) -> bool:
    return (await http_get(port, "/readyz"))[0] == status


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_mqtt_311_broker_works_too(
    db_url: str, db: Conn, broker: Broker, subscriber: Subscriber, protocol: str
) -> None:
    await db.execute(
        "INSERT INTO jobs (topic, payload) SELECT %s || i, 'x' FROM generate_series(1, 20) i",
        (subscriber.topic("v/"),),
    )
    async with running(make_settings(db_url, broker.url, mqtt_protocol=protocol)):
        await asyncio.to_thread(subscriber.wait_for, 20, 10)
        await eventually(lambda: _settled(db), 10, "rows marked")


async def test_rows_of_a_missing_partner_fire_after_the_takeover_delay(
    db_url: str, db: Conn, broker: Broker, subscriber: Subscriber
) -> None:
    # Replica 0 of 2 runs; replica 1 never comes. Its odd-id rows must still fire.
    await db.execute(
        "INSERT INTO jobs (topic, payload) SELECT %s || i, 'x' FROM generate_series(1, 10) i",
        (subscriber.topic("p/"),),
    )
    settings = make_settings(db_url, broker.url, consumer_count=2, consumer_index=0,
                             takeover_delay=2.0)  # fmt: skip
    async with running(settings):
        own = await asyncio.to_thread(subscriber.wait_for_jobs, 5, 10)
        assert all(job_id is not None and job_id % 2 == 0 for job_id in own)
        everything = await asyncio.to_thread(subscriber.wait_for_jobs, 10, 15)
    cursor = await db.execute("SELECT min(processed_at - fire_at) FROM jobs WHERE id % 2 = 1")
    row = await cursor.fetchone()
    assert row is not None
    assert row[0].total_seconds() >= 2.0
    assert len(everything) == 10


async def test_a_reschedule_wakes_an_idle_replica(
    db_url: str, db: Conn, broker: Broker, subscriber: Subscriber
) -> None:
    # Only NOTIFY can wake it: the poll is a minute away and the row a day. So first let
    # every wake of the start pass (its first claim, and the one the listener makes once
    # it listens), then reschedule; without NOTIFY this fails.
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at) VALUES (%s, 'moved', now() + interval '1 day')",
        (subscriber.topic("moved"),),
    )
    async with running(make_settings(db_url, broker.url, poll_interval=60)) as metrics:
        await eventually(lambda: _claims(metrics) >= 1, 10, "the replica to look once")
        await eventually(lambda: _listening_and_idle(db), 10, "the replica idle, listening")
        claims = _claims(metrics)
        cursor = await db.execute(
            "UPDATE jobs SET fire_at = now() + interval '300 ms'"
            " RETURNING extract(epoch FROM fire_at)"
        )
        row = await cursor.fetchone()
        assert row is not None
        [message] = await asyncio.to_thread(subscriber.wait_for, 1, 10)
        assert _claims(metrics) > claims
    assert message.payload == b"moved"
    assert message.arrived_at - float(row[0]) < 5, "woken by NOTIFY, not by the 60 s poll"


def _claims(metrics: Metrics) -> float:
    return metrics.registry.get_sample_value("jobpub_claim_duration_seconds_count") or 0.0


async def _listening_and_idle(db: Conn) -> bool:
    # The listener has run LISTEN (and woken the relay once, right after), and no
    # connection of the replica is inside a claim.
    cursor = await db.execute(
        "SELECT count(*) FILTER (WHERE query = 'LISTEN jobpub_jobs' AND state = 'idle'),"
        " count(*) FILTER (WHERE state <> 'idle')"
        " FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    row = await cursor.fetchone()
    return row is not None and row[0] == 1 and row[1] == 0
