"""MQTT 3.1.1 / 5 packets as bytes: the few this client writes and reads (publishing,
and one subscription's SUBSCRIBE, SUBACK and incoming PUBLISH)."""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Final, NamedTuple

from jobpub.mqtt.errors import ConnectRefused, ProtocolError, ProtocolVersionRefused

PROTOCOL_V311: Final = 4
PROTOCOL_V5: Final = 5
MAX_PACKET_SIZE: Final = 268_435_460  # 1 + 4 + 268,435,455: the largest MQTT packet
# The largest packet this client takes from a broker, announced in an MQTT 5 CONNECT:
# it reads acks, CONNACK, DISCONNECT and, when it subscribes, small messages (a delivery
# probe's), so this bounds the receive buffer with room to spare.
RECEIVE_MAXIMUM_PACKET_SIZE: Final = 1 << 20
_CONTROL_CHARACTER: Final = re.compile("[\x00-\x1f\x7f-\x9f]")

PINGREQ: Final = b"\xc0\x00"
DISCONNECT: Final = b"\xe0\x00"
# Packet types this client reads (the high nibble of the first byte).
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
PUBREC: Final = 5
PUBREL: Final = 6
PUBCOMP: Final = 7
SUBACK: Final = 9
PINGRESP: Final = 13
DISCONNECT_TYPE: Final = 14
PACKET_NAMES: Final = {
    CONNACK: "CONNACK", PUBLISH: "PUBLISH", PUBACK: "PUBACK", PUBREC: "PUBREC",
    PUBREL: "PUBREL", PUBCOMP: "PUBCOMP", SUBACK: "SUBACK", PINGRESP: "PINGRESP",
    DISCONNECT_TYPE: "DISCONNECT",
}  # fmt: skip

# Names of the MQTT 5 reason codes a broker may put on PUBACK/PUBREC.
REASON_NAMES: Final = {
    0x80: "unspecified error",
    0x83: "implementation specific error",
    0x87: "not authorized",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
}
CONNACK_V311_NAMES: Final = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
CONNACK_V5_NAMES: Final = {
    0x80: "unspecified error",
    0x84: "unsupported protocol version",
    0x85: "client identifier not valid",
    0x86: "bad user name or password",
    0x87: "not authorized",
    0x88: "server unavailable",
    0x89: "server busy",
    0x8A: "banned",
    0x8C: "bad authentication method",
    0x95: "packet too large",
    0x97: "quota exceeded",
    0x9F: "connection rate exceeded",
}

# MQTT 5 property identifiers and how to skip each (we read only a few).
_BYTE, _U16, _U32, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROPERTY_KINDS: Final = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STRING, 0x08: _STRING, 0x09: _BINARY,
    0x0B: _VARINT, 0x11: _U32, 0x12: _STRING, 0x13: _U16, 0x15: _STRING,
    0x16: _BINARY, 0x17: _BYTE, 0x18: _U32, 0x19: _BYTE, 0x1A: _STRING,
    0x1C: _STRING, 0x1F: _STRING, 0x21: _U16, 0x22: _U16, 0x23: _U16,
    0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32, 0x28: _BYTE,
    0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip
REASON_STRING: Final = 0x1F
SERVER_REFERENCE: Final = 0x1C
_RECEIVE_MAXIMUM: Final = 0x21
_MAXIMUM_PACKET_SIZE: Final = 0x27


class PublishProperties(NamedTuple):
    """MQTT 5 properties of a PUBLISH other than user properties (those are on Message)."""

    content_type: str | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    payload_format_utf8: bool = False
    message_expiry_interval: int | None = None


# The properties of a text message with nothing else to say (Payload Format Indicator 1,
# UTF-8): pass this very object and encode_publish writes it on its fast path.
UTF8_PAYLOAD: Final = PublishProperties(payload_format_utf8=True)


class Message(NamedTuple):
    """One application message to publish: what the broker is handed, nothing else.

    A NamedTuple: one is built per message on the publish path, and it is the cheapest
    to build. User properties are a field of their own, not in `properties`, because
    they are the ones that differ per message (an id); MQTT 3.1.1 drops both.
    """

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    user_properties: Sequence[tuple[str, str]] = ()
    properties: PublishProperties | None = None


class InboundMessage(NamedTuple):
    """A message the broker delivered on a subscription: topic, payload and flags.
    MQTT 5 properties are read past, not kept: nothing here needs them yet."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    duplicate: bool


class ConnAck(NamedTuple):
    """The limits a broker announced in CONNACK (MQTT 5); the protocol's maxima otherwise."""

    receive_maximum: int = 65535
    maximum_packet_size: int = MAX_PACKET_SIZE
    maximum_qos: int = 2
    retain_available: bool = True
    server_keepalive: int | None = None
    server_reference: str | None = None  # another server the broker suggests, to log


def encode_varint(value: int) -> bytes:
    if value < 0x80:  # every remaining length below 128 bytes: most PUBLISH packets
        return bytes((value,))
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | 0x80 if value else byte)
        if not value:
            return bytes(out)


def _string(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def encode_connect(
    version: int,
    client_id: str,
    keepalive: int,
    username: str | None,
    password: str | None,
) -> bytes:
    flags = 0x02  # clean session / clean start: nothing survives a reconnect
    payload = _string(client_id.encode())
    if username is not None:
        flags |= 0x80
        payload += _string(username.encode())
    if password is not None:
        flags |= 0x40
        payload += _string(password.encode())
    variable = _string(b"MQTT") + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == PROTOCOL_V5:
        # One property, Maximum Packet Size: the broker sends nothing larger, so what
        # this client buffers is bounded (a larger packet is a protocol error).
        variable += b"\x05" + bytes((_MAXIMUM_PACKET_SIZE,))
        variable += struct.pack("!I", RECEIVE_MAXIMUM_PACKET_SIZE)
    body = variable + payload
    return b"\x10" + encode_varint(len(body)) + body


def encode_pubrel(packet_id: int) -> bytes:
    return b"\x62\x02" + packet_id.to_bytes(2)


def encode_pubrel_not_found(packet_id: int, version: int) -> bytes:
    """PUBREL for a PUBREC whose packet id this client does not know: MQTT 5 says so
    with reason 0x92 (packet identifier not found); MQTT 3.1.1 has no reason codes."""
    if version == PROTOCOL_V5:
        return b"\x62\x03" + packet_id.to_bytes(2) + b"\x92"
    return encode_pubrel(packet_id)


def encode_ack(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC or PUBCOMP (success) for a packet the broker sent us."""
    return bytes((kind << 4 | (0x02 if kind == PUBREL else 0), 2)) + packet_id.to_bytes(2)


_USER_PROPERTY_KEYS: dict[str, bytes] = {}  # encoded keys: a publisher repeats a few


def _user_property_key(key: str) -> bytes:
    """The property identifier and the key, encoded; cached for the first few keys."""
    try:
        return _USER_PROPERTY_KEYS[key]
    except KeyError:
        encoded = b"\x26" + _string(key.encode())
        if len(_USER_PROPERTY_KEYS) < 64:
            _USER_PROPERTY_KEYS[key] = encoded
        return encoded


def encode_publish_properties(
    user_properties: Sequence[tuple[str, str]], properties: PublishProperties | None
) -> bytes:
    """The property block of an MQTT 5 PUBLISH, its length first."""
    parts = []
    if properties is not None:
        if properties.payload_format_utf8:
            parts.append(b"\x01\x01")
        if properties.message_expiry_interval is not None:
            parts.append(b"\x02" + struct.pack("!I", properties.message_expiry_interval))
        if properties.content_type is not None:
            parts.append(b"\x03" + _string(properties.content_type.encode()))
        if properties.response_topic is not None:
            parts.append(b"\x08" + _string(properties.response_topic.encode()))
        if properties.correlation_data is not None:
            parts.append(b"\x09" + _string(properties.correlation_data))
    for key, value in user_properties:
        encoded = value.encode()
        parts.append(_user_property_key(key) + len(encoded).to_bytes(2) + encoded)
    block = b"".join(parts)
    return encode_varint(len(block)) + block


def encode_publish(message: Message, version: int) -> tuple[bytes, bytes]:
    """The PUBLISH packet for `message` in two parts, head and tail: a QoS 1/2 packet's
    id is written between them once the message has room in the in-flight window."""
    topic, tail, qos, retain, user_properties, properties = message
    if version == PROTOCOL_V5:
        if (properties is None or properties is UTF8_PAYLOAD) and len(user_properties) == 1:
            # The publish path's case (one id per message, maybe the UTF-8 indicator),
            # written out: measured about 0.3 us a message faster than the general block
            # (5 us with the indicator through it, measured on a loaded machine).
            key, value = user_properties[0]
            value_bytes = value.encode()
            encoded_key = _USER_PROPERTY_KEYS.get(key) or _user_property_key(key)
            pair = encoded_key + len(value_bytes).to_bytes(2) + value_bytes
            if properties is not None:
                pair = b"\x01\x01" + pair
            tail = encode_varint(len(pair)) + pair + tail
        elif user_properties or properties is not None:
            tail = encode_publish_properties(user_properties, properties) + tail
        else:
            tail = b"\x00" + tail
    topic_bytes = topic.encode()
    remaining = 2 + len(topic_bytes) + (2 if qos else 0) + len(tail)
    head = (
        bytes((0x30 | qos << 1 | retain,))
        + encode_varint(remaining)
        + len(topic_bytes).to_bytes(2)
        + topic_bytes
    )
    return head, tail


def topic_problem(topic: str) -> str | None:
    """Why MQTT forbids publishing to this topic, or None if it may be published."""
    if not topic:
        return "topic is empty"
    # UTF-8 takes at most 4 bytes a character: only a long topic needs encoding to measure.
    if len(topic) > 16383 and len(topic.encode()) > 65535:
        return "topic is longer than 65,535 bytes"
    if "+" in topic or "#" in topic:
        return "topic contains a wildcard (+ or #)"
    if _CONTROL_CHARACTER.search(topic):
        # MQTT forbids U+0000 and discourages the rest; Mosquitto drops the connection.
        return "topic contains a control character"
    return None


def decode_properties(data: memoryview) -> tuple[dict[int, object], int]:
    """Read an MQTT 5 property block; return the properties and bytes consumed.

    ProtocolError if the block is malformed or runs past the end of `data`."""
    try:
        return _decode_properties(data)
    except IndexError:  # read_varint's "incomplete", or a value cut short
        raise ProtocolError("property block runs past the end of its packet") from None


def _decode_properties(data: memoryview) -> tuple[dict[int, object], int]:
    length, offset = read_varint(data, 0)
    end = offset + length
    if end > len(data):
        raise ProtocolError("property block longer than its packet")
    properties: dict[int, object] = {}
    while offset < end:
        identifier, offset = read_varint(data, offset)
        kind = _PROPERTY_KINDS.get(identifier)
        value: object
        if kind == _BYTE:
            value, offset = data[offset], offset + 1
        elif kind == _U16:
            value, offset = int.from_bytes(data[offset : offset + 2]), offset + 2
        elif kind == _U32:
            value, offset = int.from_bytes(data[offset : offset + 4]), offset + 4
        elif kind == _VARINT:
            value, offset = read_varint(data, offset)
        elif kind in (_STRING, _BINARY):
            size = int.from_bytes(data[offset : offset + 2])
            value, offset = bytes(data[offset + 2 : offset + 2 + size]), offset + 2 + size
        elif kind == _PAIR:
            key_size = int.from_bytes(data[offset : offset + 2])
            offset += 2 + key_size
            size = int.from_bytes(data[offset : offset + 2])
            value, offset = None, offset + 2 + size
        else:
            raise ProtocolError(f"unknown MQTT 5 property 0x{identifier:02x}")
        properties[identifier] = value
    if offset != end:
        raise ProtocolError("malformed property block")
    return properties, end


def decode_connack(body: memoryview, version: int) -> ConnAck:
    """A CONNACK that accepts the connection: the limits the broker announced.

    Only reason (return) code 0x00 accepts. ProtocolVersionRefused: the broker does not
    speak `version` (a 3.1.1-only broker answers an MQTT 5 CONNECT with 0x01, in 3.1.1
    form); ConnectRefused: any other refusal; ProtocolError: a CONNACK MQTT forbids.
    """
    if len(body) < 2:
        raise ProtocolError("CONNACK shorter than 2 bytes")
    flags, code = body[0], body[1]
    if code == 0x01 or (code == 0x84 and version == PROTOCOL_V5):
        raise ProtocolVersionRefused(code, "unsupported protocol version")
    if code != 0:
        if version == PROTOCOL_V5 and code >= 0x80:
            properties = decode_properties(body[2:])[0] if len(body) > 2 else {}
            raise ConnectRefused(
                code,
                CONNACK_V5_NAMES.get(code, f"reason 0x{code:02x}"),
                server_reference=_text(properties.get(SERVER_REFERENCE)),
            )
        # Return codes 0x02-0x05 are MQTT 3.1.1's, whatever was asked for.
        raise ConnectRefused(code, CONNACK_V311_NAMES.get(code, f"return code 0x{code:02x}"))
    if flags & 0xFE:
        raise ProtocolError(f"CONNACK flags 0x{flags:02x} set reserved bits")
    if flags & 0x01:
        # Clean Start / Clean Session was asked for, so no session can be present: MQTT 5
        # (3.2.2.1.1) says a client that has no session state and reads 1 must close.
        raise ProtocolError("CONNACK says a session was present after a clean start")
    if version != PROTOCOL_V5:
        if len(body) != 2:
            raise ProtocolError("MQTT 3.1.1 CONNACK longer than 2 bytes")
        return ConnAck()
    if len(body) == 2:
        return ConnAck()  # no property block: tolerated as an empty one
    properties, _ = decode_properties(body[2:])
    receive_maximum = properties.get(_RECEIVE_MAXIMUM, 65535)
    maximum_packet_size = properties.get(_MAXIMUM_PACKET_SIZE, MAX_PACKET_SIZE)
    if receive_maximum == 0:
        raise ProtocolError("CONNACK Receive Maximum is 0")
    if maximum_packet_size == 0:
        raise ProtocolError("CONNACK Maximum Packet Size is 0")
    maximum_qos = properties.get(0x24, 2)
    if maximum_qos not in (0, 1, 2):
        raise ProtocolError(f"CONNACK Maximum QoS is {maximum_qos}")
    return ConnAck(
        receive_maximum=int(receive_maximum),  # type: ignore[call-overload]
        maximum_packet_size=int(maximum_packet_size),  # type: ignore[call-overload]
        maximum_qos=int(maximum_qos),
        retain_available=bool(properties.get(0x25, 1)),
        server_keepalive=properties.get(0x13),  # type: ignore[arg-type]
        server_reference=_text(properties.get(SERVER_REFERENCE)),
    )


class Disconnect(NamedTuple):
    """A broker's DISCONNECT (MQTT 5): why, in its reason code and words."""

    reason_code: int
    reason_string: str
    server_reference: str | None


def decode_disconnect(body: memoryview) -> Disconnect:
    """An MQTT 5 DISCONNECT from the broker; an empty body means reason 0x00."""
    if not len(body):
        return Disconnect(0x00, "", None)
    properties = decode_properties(body[1:])[0] if len(body) > 1 else {}
    return Disconnect(
        body[0],
        _text(properties.get(REASON_STRING)) or "",
        _text(properties.get(SERVER_REFERENCE)),
    )


def decode_publish_id(header: int, body: memoryview) -> int | None:
    """A broker's PUBLISH (a subscription this client never asked for): its packet id
    if it needs an ack (QoS 1/2), or None (QoS 0). The message itself is dropped."""
    qos = header >> 1 & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    if len(body) < 2:
        raise ProtocolError("PUBLISH shorter than its topic length")
    topic_end = 2 + int.from_bytes(body[0:2])
    if not qos:
        if topic_end > len(body):
            raise ProtocolError("PUBLISH topic runs past the end of its packet")
        return None
    if topic_end + 2 > len(body):
        raise ProtocolError("PUBLISH packet id runs past the end of its packet")
    packet_id = int.from_bytes(body[topic_end : topic_end + 2])
    if not packet_id:
        raise ProtocolError("PUBLISH with packet id 0")
    return packet_id


def decode_publish(
    header: int, body: memoryview, version: int
) -> tuple[InboundMessage, int | None]:
    """A broker's PUBLISH on a subscription: the message, and its packet id if it needs
    an ack (QoS 1/2) or None (QoS 0). ProtocolError if it is malformed."""
    packet_id = decode_publish_id(header, body)
    topic_end = 2 + int.from_bytes(body[0:2])
    offset = topic_end + (2 if packet_id is not None else 0)
    if version == PROTOCOL_V5:
        _, consumed = decode_properties(body[offset:])
        offset += consumed
    message = InboundMessage(
        topic=bytes(body[2:topic_end]).decode(errors="replace"),
        payload=bytes(body[offset:]),
        qos=header >> 1 & 0x03,
        retain=bool(header & 0x01),
        duplicate=bool(header & 0x08),
    )
    return message, packet_id


def encode_subscribe(packet_id: int, topic_filter: str, qos: int, version: int) -> bytes:
    """SUBSCRIBE to one topic filter at up to `qos`. MQTT 5: no properties, and the
    options byte holds only the QoS (local messages delivered, retained ones sent)."""
    if not 1 <= packet_id <= 65535:
        raise ValueError(f"packet id {packet_id} is not 1-65535")
    if qos not in (0, 1, 2):
        raise ValueError(f"qos {qos} is not 0, 1 or 2")
    encoded = topic_filter.encode()
    if not encoded or len(encoded) > 65535:
        raise ValueError("a topic filter is 1 to 65,535 bytes")
    body = packet_id.to_bytes(2) + (b"\x00" if version == PROTOCOL_V5 else b"")
    body += _string(encoded) + bytes((qos,))
    return b"\x82" + encode_varint(len(body)) + body


def decode_suback(body: memoryview, version: int) -> tuple[int, list[int]]:
    """SUBACK: its packet id and one code per filter asked for: the QoS granted (0-2), or
    a refusal (0x80 and up). ProtocolError if it is malformed."""
    if len(body) < 3:
        raise ProtocolError("SUBACK shorter than a packet id and one code")
    packet_id = int.from_bytes(body[0:2])
    offset = 2
    if version == PROTOCOL_V5:
        _, consumed = decode_properties(body[2:])
        offset += consumed
    codes = list(body[offset:])
    if not codes:
        raise ProtocolError("SUBACK without a reason code")
    return packet_id, codes


def reason_string(properties_block: memoryview) -> str:
    """The Reason String in a property block, or "" if it has none."""
    return _text(decode_properties(properties_block)[0].get(REASON_STRING)) or ""


def _text(raw: object) -> str | None:
    return raw.decode(errors="replace") if isinstance(raw, bytes) else None


def read_varint(data: memoryview | bytearray, offset: int) -> tuple[int, int]:
    """A variable byte integer at `offset`: its value and the offset after it.

    IndexError: incomplete, wait for more bytes.
    """
    value = shift = 0
    for index in range(offset, min(offset + 4, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    if len(data) - offset >= 4:
        raise ProtocolError("malformed variable byte integer")
    raise IndexError
