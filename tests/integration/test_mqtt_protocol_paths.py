"""MQTT 5 / 3.1.1 protocol paths a real broker rarely takes on demand, against scripted
brokers on real sockets: version fallback, reconnect backoff, DISCONNECT blame, CONNACK
validation, unexpected acks and packets, malformed input."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobpub import publisher as publisher_module
from jobpub.metrics import Metrics
from jobpub.models import PUBLISHED, Delivery, Job
from jobpub.mqtt import (
    PROTOCOL_V311,
    ConnectionLost,
    Message,
    MqttConnection,
    ProtocolVersionRefused,
)
from jobpub.publisher import MqttPublisher, PublisherConfig
from testbed.scripted_broker import ScriptedBroker, protocol_level, scripted_broker
from testbed.waiting import eventually

CONNACK_V5: bytes = b"\x20\x03\x00\x00\x00"
CONNACK_V311: bytes = b"\x20\x02\x00\x00"
CONNACK_V311_UNACCEPTABLE_VERSION: bytes = b"\x20\x02\x00\x01"
SECRET = "p"  # noqa: S105 - a test password, to send without a user name


def only_mqtt_311(connect: bytes) -> bytes:
    """As a 3.1.1-only broker answers: MQTT 5 gets return code 0x01 (and a hang-up)."""
    return CONNACK_V311 if protocol_level(connect) == 4 else CONNACK_V311_UNACCEPTABLE_VERSION


def connack_v5(properties: bytes, flags: int = 0) -> bytes:
    body = bytes((flags, 0x00, len(properties))) + properties
    return b"\x20" + bytes((len(body),)) + body


def disconnect(code: int, properties: bytes = b"") -> bytes:
    body = bytes((code, len(properties))) + properties
    return b"\xe0" + bytes((len(body),)) + body


def job(job_id: int, qos: int = 1) -> Job:
    return Job(job_id, "t", "x", qos, False, 0.0)


def events(logs: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.strip()]
    return [line for line in lines if line.get("event") == name]


@contextlib.asynccontextmanager
async def running_publisher(broker: ScriptedBroker, **config: Any) -> AsyncIterator[MqttPublisher]:
    """A publisher's `run` in a task, whether or not it ever connects."""
    publisher = MqttPublisher(
        PublisherConfig(host="127.0.0.1", port=broker.port, client_id="paths", **config),
        Metrics(),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop), name="publisher-under-test")
    try:
        yield publisher
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def connection(broker: ScriptedBroker, **options: Any) -> MqttConnection:
    return MqttConnection("127.0.0.1", broker.port, client_id="paths", **options)


# -- 1. a broker that speaks only MQTT 3.1.1 -------------------------------------------


async def test_return_code_1_to_an_mqtt5_connect_is_a_refusal_not_a_connection() -> None:
    async with scripted_broker(CONNACK_V311_UNACCEPTABLE_VERSION, after_connack=b"") as broker:
        with pytest.raises(ProtocolVersionRefused):
            async with connection(broker):
                pass


async def test_the_publisher_falls_back_to_mqtt_311_once_and_charges_nobody(
    info_logs: io.StringIO,
) -> None:
    async with (
        scripted_broker(only_mqtt_311) as broker,
        running_publisher(broker) as publisher,
    ):
        assert await publisher.wait_connected(5)
        pending = publisher.publish([job(1)])
        await broker.wait_for("the PUBLISH", lambda: len(broker.packets) == 1)
        assert broker.packets[0] == b"\x32\x06\x00\x01t\x00\x01x"  # 3.1.1: no properties
        await broker.send(b"\x40\x02\x00\x01")
        assert await asyncio.wait_for(pending, 5) == [PUBLISHED]
    assert [protocol_level(c) for c in broker.connects] == [5, 4]
    [fallback] = events(info_logs, "broker_protocol_fallback")
    assert "JOBPUB_MQTT_PROTOCOL=3.1.1" in fallback["hint"]
    assert events(info_logs, "broker_connected")[0]["protocol"] == "3.1.1"


async def test_a_password_without_user_name_cannot_fall_back_and_says_how_to_fix_it(
    info_logs: io.StringIO,
) -> None:
    async with (
        scripted_broker(only_mqtt_311) as broker,
        running_publisher(broker, password=SECRET) as publisher,
    ):
        await eventually(lambda: len(broker.connects) >= 2, 10, "a second attempt, after a backoff")
        assert not publisher.connected
        assert {protocol_level(c) for c in broker.connects} == {5}, "3.1.1 forbids it"
    [unsupported] = events(info_logs, "broker_protocol_unsupported")
    assert "JOBPUB_MQTT_PROTOCOL=3.1.1" in unsupported["fix"]


async def test_a_broker_silent_to_mqtt5_is_tried_with_311_and_that_sticks(
    info_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher_module, "CONNECT_TIMEOUT", 0.5)
    silent_to_v5 = lambda connect: CONNACK_V311 if protocol_level(connect) == 4 else b""  # noqa: E731
    async with (
        scripted_broker(silent_to_v5) as broker,
        running_publisher(broker) as publisher,
    ):
        assert await publisher.wait_connected(5)
    assert [protocol_level(c) for c in broker.connects] == [5, 4]
    [fallback] = events(info_logs, "broker_protocol_fallback")
    assert "no CONNACK" in fallback["error"]


async def test_a_broker_silent_to_both_versions_is_not_taken_for_311_only(
    info_logs: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher_module, "CONNECT_TIMEOUT", 0.3)
    async with (
        scripted_broker(b"") as broker,
        running_publisher(broker) as publisher,
    ):
        await eventually(lambda: len(broker.connects) >= 4, 10, "four attempts")
        assert not publisher.connected
    # Silence is no proof of a 3.1.1-only broker: MQTT 5 again after each 3.1.1 try.
    assert [protocol_level(c) for c in broker.connects[:4]] == [5, 4, 5, 4]
    assert not events(info_logs, "broker_protocol_fallback")


def test_mqtt_311_refuses_a_password_without_a_user_name() -> None:
    # [MQTT-3.1.2-22]: the broker would close every such connection.
    with pytest.raises(ValueError, match="password without a user name"):
        MqttConnection("127.0.0.1", 1, client_id="c", protocol=PROTOCOL_V311, password=SECRET)
    with pytest.raises(ValueError, match="password without a user name"):
        MqttPublisher(
            PublisherConfig(
                host="127.0.0.1", port=1, client_id="c", protocol="3.1.1", password=SECRET
            ),
            Metrics(),
        )


# -- 2. backoff after a connection that ends early ---------------------------------------


@pytest.mark.parametrize(
    "then",
    [disconnect(0x89), disconnect(0x97), b""],
    ids=["server-busy", "quota-exceeded", "hang-up"],
)
async def test_a_broker_that_accepts_then_drops_sees_backoff_not_a_tight_loop(then: bytes) -> None:
    window = 3.0
    async with (
        scripted_broker(CONNACK_V5, after_connack=then) as broker,
        running_publisher(broker),
    ):
        started = time.monotonic()
        await eventually(lambda: len(broker.connects) >= 2, 5, "a reconnect")
        await asyncio.sleep(max(0.0, window - (time.monotonic() - started)))  # the window
        attempts = len(broker.connects)
    # Delays from 0.1-0.2 s doubling to 1-2 s: at most 7 attempts fit in 3 s (the
    # loop without backoff made thousands).
    assert 2 <= attempts <= 7, attempts


# -- 3. a DISCONNECT's reason decides whom a loss is charged to -------------------------


@pytest.mark.parametrize(
    ("reason", "oldest_charged"),
    [(0x8B, False), (0x89, False), (0x97, False), (0x00, False), (0x95, True), (0x81, True),
     (0x82, True), (0x90, True), (0x99, True), (0x9A, True), (0x9B, True)],
)  # fmt: skip
async def test_a_broker_disconnect_charges_a_message_only_for_a_packet_reason(
    reason: int, oldest_charged: bool
) -> None:
    async with (
        scripted_broker(CONNACK_V5) as broker,
        running_publisher(broker) as publisher,
    ):
        assert await publisher.wait_connected(5)
        pending = publisher.publish([job(1), job(2)])
        await broker.wait_for("both PUBLISH", lambda: len(broker.packets) == 2)
        await broker.send(disconnect(reason))
        outcomes = await asyncio.wait_for(pending, 5)
    first = Delivery.FAILED if oldest_charged else Delivery.NOT_SENT
    assert [o.delivery for o in outcomes] == [first, Delivery.NOT_SENT]
    assert f"reason 0x{reason:02x}" in outcomes[1].error


# -- 5. malformed packets ----------------------------------------------------------------


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x20\x03\x00\x00\x00",  # a second CONNACK
        b"\x40\x01\x00",  # PUBACK without a whole packet id
        b"\xf0\x00",  # AUTH: never asked for
        b"\x40\x04\x00\x01\x00\x05",  # PUBACK whose property block runs past its end
        b"\x30\xff\xff\xff\x7f",  # a 256 MiB packet: over what this client buffers
    ],
    ids=["second-connack", "short-puback", "auth", "bad-properties", "oversized"],
)
async def test_a_malformed_packet_drops_the_connection_charges_nobody_and_is_logged(
    garbage: bytes, info_logs: io.StringIO
) -> None:
    async with (
        scripted_broker(CONNACK_V5) as broker,
        running_publisher(broker) as publisher,
    ):
        assert await publisher.wait_connected(5)
        pending = publisher.publish([job(1), job(2)])
        await broker.wait_for("both PUBLISH", lambda: len(broker.packets) == 2)
        await broker.send(garbage)
        outcomes = await asyncio.wait_for(pending, 5)
        await eventually(lambda: bool(events(info_logs, "broker_protocol_error")), 5, "the log")
    assert [o.delivery for o in outcomes] == [Delivery.NOT_SENT, Delivery.NOT_SENT]
    assert "protocol error" in outcomes[0].error


# -- 6. CONNACK validation and unexpected acks ------------------------------------------


@pytest.mark.parametrize(
    ("connack", "why"),
    [
        (connack_v5(b"\x21\x00\x00"), "Receive Maximum is 0"),
        (connack_v5(b"\x27\x00\x00\x00\x00"), "Maximum Packet Size is 0"),
        (connack_v5(b"", flags=0x01), "session was present after a clean start"),
        (b"\x20\x03\x00\x01\x00", "unsupported protocol version"),
        (b"\x20\x03\x00\x02\x00", "client identifier rejected"),
    ],
)
async def test_a_connack_mqtt_forbids_or_that_refuses_is_never_a_connection(
    connack: bytes, why: str
) -> None:
    async with scripted_broker(connack) as broker:
        with pytest.raises(Exception, match=why) as raised:
            async with connection(broker):
                pass
    assert not isinstance(raised.value, ConnectionLost) or raised.value.protocol_error


async def test_a_pubrec_for_an_unknown_packet_id_is_released_with_0x92() -> None:
    async with scripted_broker(CONNACK_V5) as broker, connection(broker) as conn:
        await broker.send(b"\x50\x02\x01\x00")  # PUBREC for id 256: never sent
        await broker.wait_for("the PUBREL", lambda: len(broker.packets) == 1)
        assert broker.packets[0] == b"\x62\x03\x01\x00\x92"
        assert conn.is_open


@pytest.mark.parametrize(
    ("qos", "ack"),
    [(2, b"\x40\x02\x00\x01"), (2, b"\x70\x02\x00\x01"), (1, b"\x50\x02\x00\x01")],
    ids=["puback-for-qos2", "pubcomp-before-pubrec", "pubrec-for-qos1"],
)
async def test_an_ack_of_the_wrong_kind_is_a_protocol_error(qos: int, ack: bytes) -> None:
    async with scripted_broker(CONNACK_V5) as broker, connection(broker) as conn:
        pending = conn.publish([Message("t", b"x", qos)])
        await broker.wait_for("the PUBLISH", lambda: len(broker.packets) == 1)
        await broker.send(ack)
        [answer] = await asyncio.wait_for(pending, 5)
        assert isinstance(answer, ConnectionLost)
        assert answer.protocol_error
        assert not conn.is_open


# -- 7. CONNECT's limit, a broker's PUBLISH, server references ---------------------------


async def test_connect_announces_a_maximum_packet_size() -> None:
    async with scripted_broker(CONNACK_V5) as broker, connection(broker):
        [connect] = broker.connects
    # After protocol name, level, flags and keepalive: properties with 0x27, 1 MiB.
    assert connect[12:18] == b"\x05\x27\x00\x10\x00\x00"


async def test_a_publish_from_the_broker_is_acknowledged_and_dropped() -> None:
    async with scripted_broker(CONNACK_V5) as broker, connection(broker) as conn:
        await broker.send(b"\x32\x07\x00\x01a\x00\x07\x00x")  # QoS 1, id 7, no properties
        await broker.send(b"\x34\x07\x00\x01a\x00\x08\x00x")  # QoS 2, id 8
        await broker.send(b"\x30\x05\x00\x01a\x00x")  # QoS 0: nothing to answer
        await broker.wait_for("PUBACK and PUBREC", lambda: len(broker.packets) == 2)
        assert broker.packets == [b"\x40\x02\x00\x07", b"\x50\x02\x00\x08"]
        await broker.send(b"\x62\x02\x00\x08")  # PUBREL
        await broker.wait_for("PUBCOMP", lambda: len(broker.packets) == 3)
        assert broker.packets[2] == b"\x70\x02\x00\x08"
        assert conn.is_open


async def test_server_references_are_logged(info_logs: io.StringIO) -> None:
    reference = b"\x1c" + len(b"other:1883").to_bytes(2) + b"other:1883"
    async with (
        scripted_broker(connack_v5(reference), after_connack=disconnect(0x9C, reference)) as broker,
        running_publisher(broker),
    ):
        await eventually(
            lambda: bool(events(info_logs, "broker_connection_lost")), 5, "the loss logged"
        )
    assert events(info_logs, "broker_connected")[0]["server_reference"] == "other:1883"
    lost = events(info_logs, "broker_connection_lost")[0]
    assert lost["server_reference"] == "other:1883"
    assert lost["disconnect_reason"] == "0x9c"


async def _feed_after_connack(garbage: bytes) -> None:
    """A broker accepts, sees two messages (QoS 1 and 2), sends `garbage` and hangs up."""
    loop = asyncio.get_running_loop()
    escaped: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: escaped.append(context))
    async with scripted_broker(CONNACK_V5) as broker, connection(broker) as conn:
        pending = conn.publish([Message("t", b"x", 1), Message("t", b"x", 2)])
        await broker.wait_for("both PUBLISH", lambda: len(broker.packets) == 2)
        await broker.send(garbage)
        await broker.hang_up()
        ended = await asyncio.wait_for(asyncio.shield(conn.closed), 5)
        answers = await asyncio.wait_for(pending, 5)
    assert not escaped, escaped  # nothing escaped data_received into the event loop
    assert isinstance(ended, ConnectionLost)
    assert len(answers) == 2


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=12),
            # Packets that look right (a known type, a short length) with random bodies.
            st.tuples(st.sampled_from([0x20, 0x30, 0x32, 0x40, 0x50, 0x62, 0x70, 0xE0]),
                      st.binary(max_size=10)).map(lambda t: bytes((t[0], len(t[1]))) + t[1]),
        ),
        max_size=6,
    ).map(b"".join)
)  # fmt: skip
def test_random_bytes_from_the_broker_end_the_connection_without_escaping(garbage: bytes) -> None:
    asyncio.run(_feed_after_connack(garbage))
