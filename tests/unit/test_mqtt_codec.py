"""Encoding and decoding of the MQTT packets jobpub writes and reads."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobpub.mqtt import (
    ACCEPTED,
    PROTOCOL_V5,
    PROTOCOL_V311,
    RECEIVE_MAXIMUM_PACKET_SIZE,
    ConnectRefused,
    Message,
    MqttConnection,
    ProtocolError,
    PublishProperties,
    decode_properties,
    encode_connect,
    encode_publish,
    encode_varint,
    topic_problem,
)
from jobpub.mqtt.codec import decode_connack, decode_disconnect, decode_publish_id
from testbed.scripted_broker import scripted_broker


@pytest.mark.parametrize(
    ("value", "encoded"),
    [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
     (2_097_152, b"\x80\x80\x80\x01"), (268_435_455, b"\xff\xff\xff\x7f")],
)  # fmt: skip
def test_varint_matches_the_mqtt_spec_examples(value: int, encoded: bytes) -> None:
    assert encode_varint(value) == encoded


def test_connect_v311_with_credentials() -> None:
    packet = encode_connect(PROTOCOL_V311, "cid", 30, "user", "secret")
    assert packet[0] == 0x10
    body = packet[2:]
    assert body[:6] == b"\x00\x04MQTT"
    assert body[6] == 4
    assert body[7] == 0x80 | 0x40 | 0x02  # user name, password, clean session
    assert body.endswith(b"\x00\x04user\x00\x06secret")


def test_connect_v5_announces_its_maximum_packet_size() -> None:
    packet = encode_connect(PROTOCOL_V5, "cid", 60, None, None)
    # protocol name, level 5, clean start, keepalive 60, one property (Maximum Packet
    # Size, 1 MiB: the receive buffer's bound), client id
    assert packet == (b"\x10\x15\x00\x04MQTT\x05\x02\x00\x3c\x05\x27\x00\x10\x00\x00\x00\x03cid")
    assert RECEIVE_MAXIMUM_PACKET_SIZE == 0x100000


def test_decode_properties_reads_limits_and_skips_the_rest() -> None:
    block = (
        b"\x21\x00\x0a"  # receive maximum 10
        b"\x27\x00\x01\x00\x00"  # maximum packet size 65536
        b"\x26\x00\x01k\x00\x01v"  # a user property, skipped
        b"\x1f\x00\x02hi"  # reason string
    )
    properties, consumed = decode_properties(memoryview(encode_varint(len(block)) + block))
    assert properties[0x21] == 10
    assert properties[0x27] == 65536
    assert properties[0x1F] == b"hi"
    assert consumed == len(block) + 1


@pytest.mark.parametrize(
    ("topic", "problem"),
    [("", "empty"), ("a/+", "wildcard"), ("#", "wildcard"), ("a\x00b", "control"),
     ("a\x7fb", "control"), ("a\u0085b", "control"), ("é" * 40000, "longer than")],
)  # fmt: skip
def test_topics_mqtt_forbids(topic: str, problem: str) -> None:
    found = topic_problem(topic)
    assert found is not None
    assert problem in found


@pytest.mark.parametrize("topic", ["a", "home/valve/7", "$delayed/10/x", "a//b", "/", "ü/日本"])
def test_topics_mqtt_allows(topic: str) -> None:
    assert topic_problem(topic) is None


@pytest.mark.parametrize(
    ("version", "connack", "qos1_packet", "qos0_retained_packet"),
    [
        (
            PROTOCOL_V5,
            b"\x20\x03\x00\x00\x00",  # success, no properties
            # PUBLISH qos 1, remaining 30: topic "a/b", packet id 1, property block of
            # 20 bytes (user property jobpub-job-id = "42"), payload "hi"
            b"\x32\x1e\x00\x03a/b\x00\x01\x14\x26\x00\x0djobpub-job-id\x00\x0242hi",
            # PUBLISH qos 0 + retain, remaining 25: no packet id, job id "7", no payload
            b"\x31\x19\x00\x03a/c\x13\x26\x00\x0djobpub-job-id\x00\x017",
        ),
        (
            PROTOCOL_V311,
            b"\x20\x02\x00\x00",
            b"\x32\x09\x00\x03a/b\x00\x01hi",
            b"\x31\x05\x00\x03a/c",
        ),
    ],
)
async def test_publish_packets_on_the_wire(
    version: int, connack: bytes, qos1_packet: bytes, qos0_retained_packet: bytes
) -> None:
    async with (
        scripted_broker(connack) as broker,
        MqttConnection(
            "127.0.0.1", broker.port, client_id="cid", protocol=version, inflight=10
        ) as connection,
    ):
        sent = connection.publish(
            [
                Message("a/b", b"hi", 1, False, [("jobpub-job-id", "42")]),
                Message("a/c", b"", 0, True, [("jobpub-job-id", "7")]),
            ]
        )
        await broker.wait_for("two PUBLISH packets", lambda: len(broker.packets) == 2)
        assert broker.packets == [qos1_packet, qos0_retained_packet]
        await broker.send(b"\x40\x02\x00\x01")  # PUBACK for packet id 1
        assert await sent == [ACCEPTED, ACCEPTED]


def test_publish_properties_are_encoded_in_one_block_before_the_payload() -> None:
    message = Message(
        "t",
        b"p",
        0,
        False,
        [("k", "v")],
        PublishProperties(content_type="c", correlation_data=b"\x01", payload_format_utf8=True),
    )
    head, tail = encode_publish(message, PROTOCOL_V5)
    block = b"\x01\x01" + b"\x03\x00\x01c" + b"\x09\x00\x01\x01" + b"\x26\x00\x01k\x00\x01v"
    assert tail == encode_varint(len(block)) + block + b"p"
    properties, consumed = decode_properties(memoryview(tail))
    assert properties[0x03] == b"c"
    assert consumed == len(tail) - 1
    assert head == b"\x30" + encode_varint(3 + len(tail)) + b"\x00\x01t"
    assert encode_publish(message, PROTOCOL_V311) == (b"\x30\x04\x00\x01t", b"p")


# -- what a broker sends is never trusted: decoders raise only the package's errors ----


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64), st.sampled_from([PROTOCOL_V5, PROTOCOL_V311]))
def test_decoding_random_bytes_raises_only_the_packages_errors(data: bytes, version: int) -> None:
    view = memoryview(data)
    for decode in (
        lambda: decode_properties(view),
        lambda: decode_connack(view, version),
        lambda: decode_disconnect(view),
        lambda: decode_publish_id(0x30 | (data[0] & 0x06 if data else 0), view),
    ):
        with contextlib.suppress(ProtocolError, ConnectRefused):
            decode()


@given(st.binary(min_size=1, max_size=40))
def test_a_property_block_cut_short_is_a_protocol_error(block: bytes) -> None:
    # A length that claims more than there is: never an IndexError, never a short read.
    announced = encode_varint(len(block) + 1) + block
    with pytest.raises(ProtocolError):
        decode_properties(memoryview(announced))
