"""Expiry, the state column, dedupe keys, MQTT 5 properties and binary payloads, on real
PostgreSQL and a real Mosquitto read by paho (MQTT 5, so properties are visible)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest

from jobpub import migrations
from jobpub.db.admin import migrate, requeue
from jobpub.metrics import Metrics
from jobpub.models import PUBLISHED, Delivery, Job, Outcome
from jobpub.publisher import MqttPublisher, PublisherConfig
from testbed.broker import Broker
from testbed.daemon import make_settings, running
from testbed.subscriber import Subscriber
from testbed.waiting import eventually
from tests.integration.test_bad_rows import LEGACY_TABLE
from tests.integration.test_schema_and_claim import opened_store

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


@dataclass(frozen=True)
class Seen:
    topic: str
    payload: bytes
    user_properties: list[tuple[str, str]]
    content_type: str | None
    response_topic: str | None
    correlation_data: bytes | None
    payload_format: int | None
    expiry_interval: int | None
    arrived_at: float  # time.time()


class PropertySubscriber(Subscriber):
    """testbed's paho subscriber (MQTT 5), recording each message's properties as well."""

    def __init__(self, port: int) -> None:
        super().__init__(port, f"jobcols/{uuid.uuid4().hex[:8]}")
        self._seen: list[Seen] = []

    def _on_message(self, _: mqtt.Client, __: object, message: mqtt.MQTTMessage) -> None:
        arrived = time.time()
        p = message.properties
        seen = Seen(
            message.topic,
            bytes(message.payload),
            list(getattr(p, "UserProperty", []) or []),
            getattr(p, "ContentType", None),
            getattr(p, "ResponseTopic", None),
            getattr(p, "CorrelationData", None),
            getattr(p, "PayloadFormatIndicator", None),
            getattr(p, "MessageExpiryInterval", None),
            arrived,
        )
        with self._lock:
            self._seen.append(seen)

    async def properties_of(self, count: int, timeout: float = 20) -> dict[str, Seen]:
        """The messages by topic under the prefix, once `count` arrived."""

        def have() -> int:
            with self._lock:
                return len(self._seen)

        await eventually(lambda: have() >= count, timeout, f"{count} messages")
        with self._lock:
            return {m.topic.removeprefix(self.prefix + "/"): m for m in self._seen}


@pytest.fixture
def props(broker: Broker) -> Any:
    with PropertySubscriber(broker.port) as subscriber:
        yield subscriber


async def states(db: Conn) -> dict[int, str]:
    cursor = await db.execute("SELECT id, state FROM jobs ORDER BY id")
    return dict(await cursor.fetchall())


async def scalar(db: Conn, sql: Any, params: Any = None) -> Any:
    cursor = await db.execute(sql, params)
    row = await cursor.fetchone()
    assert row is not None
    return row[0]


# Expiry


async def test_expired_rows_are_never_published_and_end_expired_with_the_reason(
    db_url: str, db: Conn, broker: Broker, props: PropertySubscriber
) -> None:
    await db.execute(
        "INSERT INTO jobs (id, topic, payload, fire_at, expires_at) VALUES "
        # claimed after its expiry
        "(1, %s, 'late', now() - interval '1 min', now() - interval '1 s'),"
        # expires before it is due: the sweep takes it, no claim does
        "(2, %s, 'never due', now() + interval '1 hour', now() + interval '300 ms'),"
        # claimed within the lookahead, expires while held for its fire_at
        "(3, %s, 'held', now() + interval '1500 ms', now() + interval '700 ms'),"
        # published: its expiry is far
        "(4, %s, 'on time', now(), now() + interval '1 hour')",
        (props.topic("late"), props.topic("never"), props.topic("held"), props.topic("ok")),
    )
    async with running(make_settings(db_url, broker.url, lookahead=5)):

        async def settled() -> bool:
            return set((await states(db)).values()) <= {"published", "expired"}

        await eventually(settled, 20, "every row settled")
    seen = await props.properties_of(1)
    assert list(seen) == ["ok"]
    assert await states(db) == {1: "expired", 2: "expired", 3: "expired", 4: "published"}
    cursor = await db.execute(
        "SELECT id, processed, expired_at IS NOT NULL, last_error FROM jobs WHERE id < 4"
    )
    for _, processed, has_expired_at, reason in await cursor.fetchall():
        assert processed
        assert has_expired_at
        assert "expired: expires_at" in reason
        assert "passed before it was published" in reason


async def test_a_claimed_row_carries_its_seconds_to_expiry_as_a_deadline(
    db_url: str, db: Conn
) -> None:
    await db.execute(
        "INSERT INTO jobs (topic, payload, expires_at)"
        " VALUES ('t/e', 'x', now() + interval '10.5 s')"
    )
    async with opened_store(db_url) as store:
        batch = await store.claim()
        [job] = batch.jobs
        assert job.expires is not None
        left = job.expires - time.monotonic()
        assert 10.0 < left <= 10.5, "never later than the database's deadline"
        await store.settle(batch, [PUBLISHED])
    assert await scalar(db, "SELECT state FROM jobs") == "published"


async def test_the_expiry_interval_is_the_seconds_left_rounded_up(
    broker: Broker, props: PropertySubscriber
) -> None:
    publisher = MqttPublisher(
        PublisherConfig("127.0.0.1", broker.port, f"jobcols-{uuid.uuid4().hex[:6]}"), Metrics()
    )
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop), name="publisher-under-test")
    try:
        assert await publisher.wait_connected(10)
        sent_at = time.time()
        now = time.monotonic()
        outcomes = await publisher.publish(
            [
                Job(1, props.topic("soon"), "a", 1, False, 0.0, expires=now + 2.2),
                Job(2, props.topic("gone"), "b", 1, False, 0.0, expires=now - 0.01),
                Job(3, props.topic("far"), "c", 1, False, 0.0, expires=now + 1e12),
            ]
        )
    finally:
        stop.set()
        await task
    assert [o.delivery for o in outcomes] == [
        Delivery.PUBLISHED,
        Delivery.EXPIRED,
        Delivery.PUBLISHED,
    ]
    seen = await props.properties_of(2)
    assert sorted(seen) == ["far", "soon"]
    soon = seen["soon"]
    # 2.2 s left goes out as 3. Mosquitto forwards what is left in whole seconds, one
    # less only if its clock passed a second boundary between receipt and forward.
    tick = int(soon.arrived_at) != int(sent_at)
    assert soon.expiry_interval == 3 or (tick and soon.expiry_interval == 2), soon
    assert seen["far"].expiry_interval is not None
    assert seen["far"].expiry_interval > 2**32 - 10, "capped at the property's maximum"


async def test_a_published_row_carries_its_expiry_through_the_daemon(
    db_url: str, db: Conn, broker: Broker, props: PropertySubscriber
) -> None:
    await db.execute(
        "INSERT INTO jobs (topic, payload, expires_at) VALUES (%s, 'x', now() + interval '1 hour')",
        (props.topic("hour"),),
    )
    async with running(make_settings(db_url, broker.url)):
        seen = await props.properties_of(1)
    assert seen["hour"].expiry_interval is not None
    assert 3590 <= seen["hour"].expiry_interval <= 3600


# State in one column


async def test_state_answers_the_four_states_through_every_path(db_url: str, db: Conn) -> None:
    await db.execute(
        "INSERT INTO jobs (id, topic, payload, fire_at, attempts) VALUES "
        "(1, 't/published', 'x', now() - interval '5 s', 0),"
        "(2, 't/retry', 'x', now() - interval '4 s', 0),"
        "(3, 't/last-try', 'x', now() - interval '3 s', 1),"
        "(4, 't/rejected', 'x', now() - interval '2 s', 0)"
    )
    assert set((await states(db)).values()) == {"pending"}
    failed = Outcome(Delivery.FAILED, "x", "failed")
    rejected = Outcome(Delivery.REJECTED, "x", "rejected")
    async with opened_store(db_url, max_attempts=2) as store:
        batch = await store.claim()  # its sweep for expired rows runs first, finds none
        await store.settle(batch, [PUBLISHED, failed, failed, rejected])
        # Claimed after its expiry (the next sweep is a second away): the claim refuses it.
        await db.execute(
            "INSERT INTO jobs (id, topic, payload, expires_at) "
            "VALUES (5, 't/expired', 'x', now() - interval '1 ms')"
        )
        batch = await store.claim()
        assert batch.expired == [5]
        assert batch.jobs == []
        settled = await store.settle(batch, [])
        assert settled.expired == 1
    assert await states(db) == {1: "published", 2: "pending", 3: "dead", 4: "dead", 5: "expired"}
    assert sorted(await requeue(db_url, [3])) == [3]
    assert (await states(db))[3] == "pending"


async def test_state_follows_plain_sql_writers(db: Conn) -> None:
    # The seed's INSERT forms, and operators' UPDATEs that know nothing of `state`.
    await db.execute("INSERT INTO jobs (topic, payload, fire_at) VALUES ('t/a', 'x', now())")
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at, processed, processed_at) "
        "VALUES ('t/b', 'x', now(), true, now()), ('t/c', 'x', now(), false, null)"
    )
    assert await states(db) == {1: "pending", 2: "published", 3: "pending"}
    await db.execute("UPDATE jobs SET failed_at = now(), last_error = 'by hand' WHERE id = 1")
    await db.execute("UPDATE jobs SET processed = true WHERE id = 3")
    assert await states(db) == {1: "dead", 2: "published", 3: "published"}
    await db.execute("UPDATE jobs SET failed_at = NULL WHERE id = 1")
    await db.execute("UPDATE jobs SET state = 'expired' WHERE id = 1")  # not a way to expire
    await db.execute("UPDATE jobs SET expired_at = now() WHERE id = 2")
    assert await states(db) == {1: "pending", 2: "expired", 3: "published"}


async def test_migrating_an_adopted_table_gives_its_rows_their_state(empty_db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(empty_db_url, autocommit=True) as db:
        await db.execute(LEGACY_TABLE)
        await db.execute(
            "INSERT INTO jobs (topic, payload, fire_at, processed, processed_at) VALUES "
            "('t/done', 'x', now() - interval '1 day', true, now()),"
            "('t/waiting', 'x', now() + interval '1 day', false, NULL),"
            "('t/+/bad', 'x', now() - interval '1 day', false, NULL)"
        )
        await migrate(empty_db_url, migrations.scripts())
        assert await states(db) == {1: "published", 2: "pending", 3: "dead"}


# Dedupe keys


async def test_a_duplicate_dedupe_insert_gives_one_row(db: Conn) -> None:
    insert = (
        "INSERT INTO jobs (topic, payload, dedupe_key) VALUES ('t/d', %s, %s)"
        " ON CONFLICT (dedupe_key) DO NOTHING RETURNING id"
    )
    first = await (await db.execute(insert, ("first", "order-17"))).fetchall()
    retry = await (await db.execute(insert, ("retry", "order-17"))).fetchall()
    assert len(first) == 1
    assert retry == []
    for payload in ("no key 1", "no key 2"):  # NULL keys never conflict
        await db.execute(insert, (payload, None))
    cursor = await db.execute("SELECT payload FROM jobs ORDER BY id")
    assert [p for (p,) in await cursor.fetchall()] == ["first", "no key 1", "no key 2"]
    with pytest.raises(psycopg.errors.UniqueViolation):
        await db.execute(
            "INSERT INTO jobs (topic, payload, dedupe_key) VALUES ('t', 'x', 'order-17')"
        )


# MQTT 5 properties and binary payloads


async def test_properties_and_a_binary_payload_arrive_intact(
    db_url: str, db: Conn, broker: Broker, props: PropertySubscriber
) -> None:
    binary = bytes(range(256))  # not UTF-8
    await db.execute(
        "INSERT INTO jobs (topic, payload, content_type, user_properties, response_topic,"
        " correlation_data) VALUES"
        ' (%s, \'{"open": true}\', \'application/json\', \'{"site": "north", "n": "7"}\','
        "  'replies/valve/7', '\\x00ff10'::bytea)",
        (props.topic("text"),),
    )
    await db.execute(
        "INSERT INTO jobs (topic, payload_bytes) VALUES (%s, %s)", (props.topic("binary"), binary)
    )
    await db.execute(
        "INSERT INTO jobs (topic, payload) VALUES (%s, 'plain')", (props.topic("plain"),)
    )
    async with running(make_settings(db_url, broker.url)):
        seen = await props.properties_of(3)
    text, raw, plain = seen["text"], seen["binary"], seen["plain"]
    assert text.payload == b'{"open": true}'
    assert text.content_type == "application/json"
    assert text.response_topic == "replies/valve/7"
    assert text.correlation_data == b"\x00\xff\x10"
    assert text.payload_format == 1
    assert text.user_properties[0][0] == "jobpub-job-id"
    assert sorted(text.user_properties[1:]) == [("n", "7"), ("site", "north")]
    assert raw.payload == binary
    assert raw.payload_format in (None, 0), "a binary payload is not marked UTF-8"
    assert [k for k, _ in raw.user_properties] == ["jobpub-job-id"]
    assert plain.payload == b"plain"
    assert plain.payload_format == 1
    assert await scalar(db, "SELECT count(*) FROM jobs WHERE state = 'published'") == 3


async def test_mqtt_311_drops_properties_but_sends_the_binary_payload(
    db_url: str, db: Conn, broker: Broker, props: PropertySubscriber
) -> None:
    await db.execute(
        "INSERT INTO jobs (topic, payload_bytes, content_type, user_properties, expires_at)"
        " VALUES (%s, '\\x00ff'::bytea, 'application/octet-stream', '{\"a\": \"b\"}',"
        " now() + interval '1 hour')",
        (props.topic("old"),),
    )
    async with running(make_settings(db_url, broker.url, mqtt_protocol="3.1.1")):
        seen = await props.properties_of(1)
    old = seen["old"]
    assert old.payload == b"\x00\xff"
    assert old.user_properties == []  # the job id included
    assert old.content_type is None
    assert old.expiry_interval is None


async def test_constraints_refuse_ambiguous_payloads_and_bad_user_properties(db: Conn) -> None:
    for values in [
        "('t', 'text', '\\x00'::bytea, NULL)",  # both payloads
        "('t', '', NULL, '[\"a\"]')",  # not an object
        "('t', '', NULL, '{\"a\": 1}')",  # not a string
    ]:
        with pytest.raises(psycopg.errors.CheckViolation):
            await db.execute(
                "INSERT INTO jobs (topic, payload, payload_bytes, user_properties) VALUES " + values
            )
    await db.execute(
        "INSERT INTO jobs (topic, payload_bytes, user_properties) VALUES"
        " ('t', '\\x00'::bytea, '{\"a\": \"1\"}')"
    )


async def test_a_binary_payload_counts_against_the_payload_limit(db_url: str, db: Conn) -> None:
    await db.execute(
        "INSERT INTO jobs (id, topic, payload_bytes) VALUES (1, 't/big', %s), (2, 't/ok', %s)",
        (b"\x01" * 3000, b"\x02" * 10),
    )
    async with opened_store(db_url, max_payload_bytes=2048) as store:
        batch = await store.claim()
        assert [r.reason for r in batch.refused] == [
            "payload is 3000 bytes, over JOBPUB_MAX_PAYLOAD_BYTES (2048)"
        ]
        [job] = batch.jobs
        assert job.payload_bytes == b"\x02" * 10
        await store.settle(batch, [PUBLISHED])
    assert await states(db) == {1: "dead", 2: "published"}
