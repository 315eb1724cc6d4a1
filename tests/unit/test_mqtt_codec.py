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
from jobpub.mqtt.codec import (
    InboundMessage,
    decode_connack,
    decode_disconnect,
    decode_publish,
    decode_publish_id,
    decode_suback,
    encode_subscribe,
    read_varint,
)
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
        lambda: decode_publish(0x30 | (data[0] & 0x06 if data else 0), view, version),
        lambda: decode_suback(view, version),
    ):
        with contextlib.suppress(ProtocolError, ConnectRefused):
            decode()


@given(st.binary(min_size=1, max_size=40))
def test_a_property_block_cut_short_is_a_protocol_error(block: bytes) -> None:
    # A length that claims more than there is: never an IndexError, never a short read.
    announced = encode_varint(len(block) + 1) + block
    with pytest.raises(ProtocolError):
        decode_properties(memoryview(announced))


# -- subscribing: SUBSCRIBE out, SUBACK and PUBLISH in ---------------------------------


def test_subscribe_v311_is_packet_id_filter_and_qos() -> None:
    # MQTT 3.1.1 3.8: fixed header 0x82, packet id, length-prefixed filter, requested QoS.
    assert encode_subscribe(7, "a/b", 1, PROTOCOL_V311) == b"\x82\x08\x00\x07\x00\x03a/b\x01"


def test_subscribe_v5_has_an_empty_property_block_before_the_filter() -> None:
    assert encode_subscribe(7, "a/b", 2, PROTOCOL_V5) == (b"\x82\x09\x00\x07\x00\x00\x03a/b\x02")


@pytest.mark.parametrize(
    ("packet_id", "topic_filter", "qos"), [(0, "a", 1), (65536, "a", 1), (1, "", 1), (1, "a", 3)]
)
def test_subscribe_refuses_what_mqtt_forbids(packet_id: int, topic_filter: str, qos: int) -> None:
    with pytest.raises(ValueError, match=r"is not|filter is"):
        encode_subscribe(packet_id, topic_filter, qos, PROTOCOL_V5)


def test_suback_gives_the_packet_id_and_codes_in_both_versions() -> None:
    assert decode_suback(memoryview(b"\x00\x07\x01"), PROTOCOL_V311) == (7, [1])
    assert decode_suback(memoryview(b"\x00\x07\x80"), PROTOCOL_V311) == (7, [0x80])
    # MQTT 5: a property block (here a Reason String) comes before the codes.
    v5 = b"\x00\x07" + b"\x05\x1f\x00\x02no" + b"\x87"
    assert decode_suback(memoryview(v5), PROTOCOL_V5) == (7, [0x87])


@pytest.mark.parametrize("body", [b"\x00\x07", b"\x00\x07\x00"])
def test_a_suback_without_a_code_is_a_protocol_error(body: bytes) -> None:
    version = PROTOCOL_V5 if len(body) == 3 else PROTOCOL_V311
    with pytest.raises(ProtocolError):
        decode_suback(memoryview(body), version)


def test_publish_qos1_v311_gives_the_message_and_its_packet_id() -> None:
    body = b"\x00\x03a/b\x00\x2apayload"
    message, packet_id = decode_publish(0x32 | 0x08 | 0x01, memoryview(body), PROTOCOL_V311)
    assert message == InboundMessage("a/b", b"payload", qos=1, retain=True, duplicate=True)
    assert packet_id == 42


def test_publish_v5_skips_its_properties_and_qos0_has_no_packet_id() -> None:
    # A user property (0x26) and Payload Format Indicator: read past, not in the payload.
    properties = b"\x01\x01" + b"\x26\x00\x01k\x00\x01v"
    body = b"\x00\x01t" + bytes([len(properties)]) + properties + b"p"
    message, packet_id = decode_publish(0x30, memoryview(body), PROTOCOL_V5)
    assert message == InboundMessage("t", b"p", qos=0, retain=False, duplicate=False)
    assert packet_id is None


def test_what_encode_publish_writes_decode_publish_reads() -> None:
    sent = Message("x/y", b"\x00bytes", qos=1, user_properties=[("jobpub-job-id", "9")])
    for version in (PROTOCOL_V5, PROTOCOL_V311):
        head, tail = encode_publish(sent, version)
        packet = head + (5).to_bytes(2) + tail
        _, body_start = read_varint(memoryview(packet), 1)
        message, packet_id = decode_publish(packet[0], memoryview(packet[body_start:]), version)
        assert (message.topic, message.payload, message.qos, packet_id) == (
            "x/y",
            b"\x00bytes",
            1,
            5,
        )
