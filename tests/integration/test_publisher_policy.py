"""Delivery policy and ack deadlines, against a scripted broker that answers as told.

Mosquitto cannot be made to refuse with every reason code or to withhold a PUBACK
while it answers pings; this fake peer, on a real socket, can.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

from jobpub.metrics import Metrics
from jobpub.models import PUBLISHED, Delivery, Job, Outcome
from jobpub.mqtt import AckTimeout, Message, MqttConnection
from jobpub.publisher import MqttPublisher, PublisherConfig
from testbed.scripted_broker import ScriptedBroker, scripted_broker

CONNACK_V5: bytes = b"\x20\x03\x00\x00\x00"  # success, no properties
CONNACK_V311: bytes = b"\x20\x02\x00\x00"


def job(job_id: int, topic: str = "t", qos: int = 1) -> Job:
    return Job(job_id, topic, "x", qos, False, 0.0)


def puback(packet_id: int, code: int, reason: bytes = b"") -> bytes:
    """An MQTT 5 PUBACK with a reason code and, if given, a Reason String."""
    properties = b"\x1f" + len(reason).to_bytes(2) + reason if reason else b""
    body = packet_id.to_bytes(2) + bytes((code, len(properties))) + properties
    return b"\x40" + bytes((len(body),)) + body


@contextlib.asynccontextmanager
async def publishing(broker: ScriptedBroker, **config: Any) -> AsyncIterator[MqttPublisher]:
    publisher = MqttPublisher(
        PublisherConfig(host="127.0.0.1", port=broker.port, client_id="policy", **config),
        Metrics(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop), name="publisher-under-test")
    try:
        assert await publisher.wait_connected(5)
        yield publisher
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_lost_puback_fails_its_message_within_the_ack_deadline_despite_pings() -> None:
    # Pings every 0.5 s keep the connection talking; only a per-message deadline can see
    # that the PUBACK never comes (a silence clock is reset by every PINGRESP).
    async with (
        scripted_broker(CONNACK_V5) as broker,
        MqttConnection(
            "127.0.0.1", broker.port, client_id="deadline", keepalive=1, ack_timeout=1.5
        ) as connection,
    ):
        started = time.monotonic()
        sent = connection.publish([Message("a", b"x", 1), Message("b", b"x", 1)])
        [first, second] = await asyncio.wait_for(sent, 3)
        waited = time.monotonic() - started
        assert isinstance(first, AckTimeout)
        assert isinstance(second, AckTimeout)
        assert first.oldest_unanswered
        assert not second.oldest_unanswered
        assert 1.5 <= waited < 2.25  # the deadline, plus slack for a busy machine
        assert broker.pings >= 2, "the broker answered pings all along"
        assert isinstance(connection.closed.result(), AckTimeout)


async def test_the_publisher_releases_rows_whose_ack_never_comes_and_reconnects() -> None:
    async with (
        scripted_broker(CONNACK_V5) as broker,
        publishing(broker, keepalive=1, ack_timeout=1.0) as publisher,
    ):
        outcomes = await asyncio.wait_for(publisher.publish([job(1), job(2)]), 3)
        assert [o.delivery for o in outcomes] == [Delivery.FAILED, Delivery.NOT_SENT]
        assert all(o.reason == "connection_lost" for o in outcomes)
        assert "no ack from the broker within 1s" in outcomes[1].error
        assert await publisher.wait_connected(5), "a new connection replaces the stuck one"


async def test_reason_codes_map_to_outcomes() -> None:
    answers = [
        puback(1, 0x00),
        puback(2, 0x10),  # no matching subscribers: still a success
        puback(3, 0x87, b"nope"),
        puback(4, 0x90),
        puback(5, 0x99),
        puback(6, 0x97),
        puback(7, 0x80),
        puback(8, 0x83),
    ]
    async with scripted_broker(CONNACK_V5) as broker, publishing(broker) as publisher:
        pending = publisher.publish([job(i) for i in range(1, len(answers) + 1)])
        await broker.wait_for("every PUBLISH", lambda: len(broker.packets) == len(answers))
        await broker.send(b"".join(answers))
        outcomes = await asyncio.wait_for(pending, 5)
    assert outcomes[:2] == [PUBLISHED, PUBLISHED]
    assert outcomes[2] == Outcome(
        Delivery.REJECTED, "broker_0x87", "broker refused the message: not authorized (0x87): nope"
    )
    assert [(o.delivery, o.reason) for o in outcomes[3:]] == [
        (Delivery.REJECTED, "broker_0x90"),  # topic name invalid
        (Delivery.REJECTED, "broker_0x99"),  # payload format invalid
        (Delivery.FAILED, "broker_0x97"),  # quota exceeded: may pass later
        (Delivery.FAILED, "broker_0x80"),
        (Delivery.FAILED, "broker_0x83"),
    ]


async def test_a_refused_qos2_publish_gets_no_pubrel_and_its_outcome() -> None:
    async with scripted_broker(CONNACK_V5) as broker, publishing(broker) as publisher:
        pending = publisher.publish([job(1, qos=2), job(2, qos=2)])
        await broker.wait_for("both PUBLISH", lambda: len(broker.packets) == 2)
        await broker.send(b"\x50\x03\x00\x01\x97" + b"\x50\x02\x00\x02")  # PUBREC: no, yes
        await broker.wait_for("PUBREL for packet 2", lambda: len(broker.packets) == 3)
        assert broker.packets[2] == b"\x62\x02\x00\x02"
        await broker.send(b"\x70\x02\x00\x02")  # PUBCOMP
        outcomes = await asyncio.wait_for(pending, 5)
    assert outcomes == [Outcome(Delivery.FAILED, "broker_0x97", outcomes[0].error), PUBLISHED]


async def test_topics_outside_the_allowed_prefixes_are_rejected_and_the_rest_sent() -> None:
    async with (
        scripted_broker(CONNACK_V311) as broker,
        publishing(broker, protocol="3.1.1", topic_prefixes=("ok/",)) as publisher,
    ):
        pending = publisher.publish([job(1, "ok/a"), job(2, "other"), job(3, "ok/b", qos=0)])
        await broker.wait_for("two PUBLISH", lambda: len(broker.packets) == 2)
        await broker.send(b"\x40\x02\x00\x01")  # MQTT 3.1.1 PUBACK: no reason code
        outcomes = await asyncio.wait_for(pending, 5)
    assert outcomes[0] == PUBLISHED
    assert outcomes[1].delivery is Delivery.REJECTED
    assert outcomes[1].reason == "topic_not_allowed"
    assert outcomes[2] == PUBLISHED


async def test_after_a_refusal_a_hang_up_charges_nobody() -> None:
    # Mosquitto refuses a $SYS publish, then hangs up: the refusal explains the loss.
    async with scripted_broker(CONNACK_V5) as broker, publishing(broker) as publisher:
        pending = publisher.publish([job(1), job(2), job(3)])
        await broker.wait_for("three PUBLISH", lambda: len(broker.packets) == 3)
        await broker.send(puback(1, 0x87))
        await broker.hang_up()
        outcomes = await asyncio.wait_for(pending, 5)
    assert outcomes[0].delivery is Delivery.REJECTED
    assert [o.delivery for o in outcomes[1:]] == [Delivery.NOT_SENT, Delivery.NOT_SENT]


async def test_a_hang_up_charges_the_oldest_unanswered_message_only() -> None:
    async with scripted_broker(CONNACK_V5) as broker, publishing(broker) as publisher:
        pending = publisher.publish([job(1), job(2), job(3)])
        await broker.wait_for("three PUBLISH", lambda: len(broker.packets) == 3)
        await broker.send(puback(1, 0x00))
        await broker.hang_up()
        outcomes = await asyncio.wait_for(pending, 5)
    assert outcomes[0] == PUBLISHED
    assert outcomes[1].delivery is Delivery.FAILED
    assert "oldest awaiting an ack" in outcomes[1].error
    assert outcomes[2].delivery is Delivery.NOT_SENT
