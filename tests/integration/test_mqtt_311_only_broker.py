"""A second broker implementation besides Mosquitto: amqtt, which speaks only MQTT 3.1.1.

It answers jobpub's default MQTT 5 CONNECT with return code 0x01 and hangs up: jobpub
falls back to 3.1.1 once, charges no row for it, and publishes every job once.
"""

from __future__ import annotations

import asyncio
import collections
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from jobpub.metrics import Metrics
from jobpub.models import PUBLISHED, Job
from jobpub.publisher import MqttPublisher, PublisherConfig
from testbed.amqtt_broker import AmqttBroker, start_amqtt_broker
from testbed.daemon import Replica, env_for
from testbed.subscriber import Subscriber
from testbed.waiting import wait_until


@pytest.fixture(scope="module")
def amqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AmqttBroker]:
    with start_amqtt_broker(tmp_path_factory.mktemp("amqtt") / "amqtt.log") as broker:
        yield broker


@pytest.fixture
def subscriber_311(amqtt_broker: AmqttBroker) -> Iterator[Subscriber]:
    prefix = f"t{uuid.uuid4().hex[:10]}"
    with Subscriber(amqtt_broker.port, prefix, MQTTProtocolVersion.MQTTv311) as running:
        yield running


def log_events(text: str, name: str) -> list[dict[str, object]]:
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                events.append(event)
    return events


async def test_the_publisher_with_default_settings_falls_back_and_delivers(
    amqtt_broker: AmqttBroker, subscriber_311: Subscriber
) -> None:
    publisher = MqttPublisher(
        PublisherConfig(host="127.0.0.1", port=amqtt_broker.port, client_id="fallback"),
        Metrics(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop), name="publisher-under-test")
    try:
        # amqtt never answers jobpub's MQTT 5 CONNECT (it reads the properties as 3.1.1
        # fields): the connect timeout (10 s), then MQTT 3.1.1.
        assert await publisher.wait_connected(25)
        jobs = [
            Job(i, subscriber_311.topic(str(i)), f"payload {i}", i % 3, False, 0.0)
            for i in range(1, 301)
        ]
        outcomes = await asyncio.wait_for(publisher.publish(jobs), 30)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    assert outcomes == [PUBLISHED] * len(jobs)
    received = await asyncio.to_thread(subscriber_311.wait_for, len(jobs), 30)
    assert sorted(m.payload.decode() for m in received) == sorted(j.payload for j in jobs)


def test_a_replica_with_default_settings_publishes_every_job_once_charging_none(
    db_url: str, amqtt_broker: AmqttBroker, subscriber_311: Subscriber, tmp_path: Path
) -> None:
    count = 600
    replica = Replica(env_for(db_url, amqtt_broker.url), tmp_path / "replica.log")
    try:
        wait_until(lambda: '"broker_connected"' in replica.log_text(), 30, "replica connected")
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO jobs (topic, payload, fire_at, qos) "
                "SELECT %s || '/' || i, i::text, now() - interval '1 s', i %% 3 "
                "FROM generate_series(1, %s) i",
                (subscriber_311.prefix, count),
            )

        def settled() -> bool:
            with psycopg.connect(db_url) as conn:
                row = conn.execute("SELECT count(*) FROM jobs WHERE processed").fetchone()
                return row is not None and row[0] == count

        wait_until(settled, 60, "every row marked processed")
        received = subscriber_311.wait_for(count, 30)
        with psycopg.connect(db_url) as conn:
            charged = conn.execute("SELECT count(*) FROM jobs WHERE attempts > 0").fetchone()
        log = replica.log_text()
    finally:
        replica.close()
    copies = collections.Counter(m.payload.decode() for m in received)
    assert sorted(copies) == sorted(str(i) for i in range(1, count + 1))
    assert max(copies.values()) == 1, "a job was published twice"
    assert charged == (0,), "a row was charged for the protocol fallback"
    assert len(log_events(log, "broker_protocol_fallback")) == 1, log
    assert all(e["protocol"] == "3.1.1" for e in log_events(log, "broker_connected"))
