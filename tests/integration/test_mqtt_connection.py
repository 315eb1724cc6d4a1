"""jobpub's MQTT connection against a real Mosquitto, checked by an independent subscriber."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from jobpub.metrics import Metrics
from jobpub.models import PUBLISHED, Delivery, Job
from jobpub.mqtt import PROTOCOL_V5, PROTOCOL_V311, MqttConnection, encode_connect
from jobpub.publisher import MqttPublisher
from testbed.broker import Broker, start_broker
from testbed.daemon import make_settings
from testbed.subscriber import Subscriber
from testbed.waiting import eventually


async def connect(port: int, version: int = PROTOCOL_V5, inflight: int = 1000) -> MqttConnection:
    loop = asyncio.get_running_loop()
    _, connection = await loop.create_connection(
        lambda: MqttConnection(version, inflight), "127.0.0.1", port
    )
    connection.send(encode_connect(version, f"test-{id(connection)}", 30, None, None))
    await asyncio.wait_for(connection.connack, 5)
    return connection


@pytest.fixture
async def connection(broker: Broker) -> AsyncIterator[MqttConnection]:
    conn = await connect(broker.port)
    yield conn
    conn.disconnect()


def job(job_id: int, topic: str, payload: str = "x", qos: int = 1, retain: bool = False) -> Job:
    return Job(job_id, topic, payload, qos, retain, 0.0)


@pytest.mark.parametrize("version", [PROTOCOL_V5, PROTOCOL_V311])
@pytest.mark.parametrize("qos", [0, 1, 2])
async def test_every_message_arrives_once_with_its_job_id(
    broker: Broker, subscriber: Subscriber, version: int, qos: int
) -> None:
    conn = await connect(broker.port, version, inflight=50)  # a full window, many times over
    jobs = [job(i, subscriber.topic(f"m/{i}"), f"payload {i}", qos) for i in range(1, 1001)]
    outcomes = await asyncio.wait_for(conn.publish(jobs), 30)
    conn.disconnect()
    assert outcomes == [PUBLISHED] * len(jobs)
    received = subscriber.wait_for(len(jobs), 30)
    assert sorted(m.payload.decode() for m in received) == sorted(j.payload for j in jobs)
    if version == PROTOCOL_V5:
        assert sorted(m.job_id or 0 for m in received) == [j.id for j in jobs]
    else:  # MQTT 3.1.1 has no user properties
        assert {m.job_id for m in received} == {None}


async def test_broker_refusal_is_reported_per_message(
    connection: MqttConnection, subscriber: Subscriber
) -> None:
    # Mosquitto refuses client publishes to $SYS with PUBACK "not authorized" (0x87),
    # then hangs up: the message behind it is released uncharged, to go out again.
    outcomes = await asyncio.wait_for(
        connection.publish([job(1, "$SYS/jobpub"), job(2, subscriber.topic("fine"))]), 10
    )
    assert outcomes[0].delivery is Delivery.REJECTED
    assert "not authorized (0x87)" in outcomes[0].error
    assert outcomes[1].delivery in (Delivery.PUBLISHED, Delivery.NOT_SENT)


async def test_rows_mqtt_forbids_are_refused_before_sending(connection: MqttConnection) -> None:
    too_big = "x" * (connection.limits.maximum_packet_size + 1)
    outcomes = await connection.publish(
        [job(1, ""), job(2, "a/+"), job(3, "a/\x00"), job(4, "ok", too_big), job(5, "ok", qos=3)]
    )
    assert [o.reason for o in outcomes] == [
        "invalid_topic", "invalid_topic", "invalid_topic", "packet_too_large", "invalid_qos",
    ]  # fmt: skip
    assert all(o.delivery is Delivery.REJECTED for o in outcomes)
    assert connection.is_open, "refusing a row must not cost the connection"


async def test_oversized_message_on_mqtt_311_charges_only_the_oldest_unacked(
    tmp_path: Path,
) -> None:
    # MQTT 3.1.1 clients are not told the broker's limit: Mosquitto just hangs up.
    with start_broker(tmp_path, "max_packet_size 2000") as broker:
        conn = await connect(broker.port, PROTOCOL_V311)
        outcomes = await asyncio.wait_for(
            conn.publish([job(1, "big", "x" * 5000), job(2, "small"), job(3, "small")]), 10
        )
    assert outcomes[0].delivery is Delivery.FAILED
    assert [o.delivery for o in outcomes[1:]] == [Delivery.NOT_SENT, Delivery.NOT_SENT]


async def test_publish_when_the_connection_is_gone_releases_everything(own_broker: Broker) -> None:
    conn = await connect(own_broker.port)
    own_broker.stop(hard=True)
    await asyncio.wait_for(conn.closed, 10)
    outcomes = await conn.publish([job(1, "a"), job(2, "b")])
    assert [o.delivery for o in outcomes] == [Delivery.NOT_SENT, Delivery.NOT_SENT]


async def test_publisher_reconnects_after_the_broker_restarts(own_broker: Broker) -> None:
    settings = make_settings("postgresql://unused/x", own_broker.url)
    metrics = Metrics()
    publisher = MqttPublisher(settings, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop), name="publisher-under-test")
    try:
        assert await publisher.wait_connected(10)
        own_broker.stop()
        await eventually(lambda: not publisher.connected, 4, "the loss noticed")
        assert not publisher.connected
        own_broker.start()
        assert await publisher.wait_connected(15)
        outcomes = await asyncio.wait_for(publisher.publish([job(1, "after/restart")]), 10)
        assert outcomes == [PUBLISHED]
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_waiting_for_the_broker_right_after_a_loss_does_not_say_connected(
    own_broker: Broker,
) -> None:
    # Right after a loss, before `run` has seen it, the connected event is still set.
    # wait_connected used to return True at once there without yielding, and the claim
    # loop (if not connected: wait, continue) spun forever and starved `run` (found by
    # bench chaos: replicas at 100% CPU, deaf to SIGTERM).
    publisher = MqttPublisher(make_settings("postgresql://unused/x", own_broker.url), Metrics())
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop), name="publisher-under-test")
    try:
        assert await publisher.wait_connected(10)
        own_broker.stop(hard=True)
        while publisher.connected:  # noqa: ASYNC110 - must see the loss before `run` does
            await asyncio.sleep(0)
        assert not await publisher.wait_connected(timeout=0.05)
        assert not await publisher.wait_connected(timeout=0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_retain_flag_is_honoured(broker: Broker, connection: MqttConnection) -> None:
    topic = f"retained/{id(connection)}"
    assert await connection.publish([job(1, topic, "kept", retain=True)]) == [PUBLISHED]
    # A subscriber that arrives later still gets the retained message.
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    loop = asyncio.get_running_loop()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)

    def on_message(_: paho.Client, __: object, message: paho.MQTTMessage) -> None:
        payload = bytes(message.payload)
        loop.call_soon_threadsafe(lambda: None if got.done() else got.set_result(payload))

    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    try:
        assert await asyncio.wait_for(got, 10) == b"kept"
    finally:
        client.loop_stop()
        client.disconnect()
