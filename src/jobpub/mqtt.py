"""A publish-only MQTT 3.1.1 / 5 connection on asyncio.Protocol.

Why our own and not aiomqtt: aiomqtt 2.5 discards the PUBACK reason code, so a
broker's refusal (MQTT 5 "not authorized", "quota exceeded") looks like success
and the row would be marked published. It also awaits each message on its own.
This connection writes a window of PUBLISH packets in one write, settles each
message by its packet id with the broker's verdict, and honours the broker's
Receive Maximum, Maximum QoS, Retain Available and Maximum Packet Size.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import re
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from jobpub.models import PUBLISHED, Delivery, Job, Outcome

PROTOCOL_V311: Final = 4
PROTOCOL_V5: Final = 5
MAX_PACKET_SIZE: Final = 268_435_460  # 1 + 4 + 268,435,455: the largest MQTT packet
JOB_ID_PROPERTY: Final = b"jobpub-job-id"
_CONTROL_CHARACTER: Final = re.compile("[\x00-\x1f\x7f-\x9f]")
_TCP_QUICKACK: Final = getattr(socket, "TCP_QUICKACK", None)  # Linux only

# MQTT 5 reason codes on PUBACK/PUBREC that no retry can fix: the row goes dead.
_PERMANENT_REFUSALS: Final = {0x87, 0x90, 0x99}
_REASON_NAMES: Final = {
    0x80: "unspecified error",
    0x83: "implementation specific error",
    0x87: "not authorized",
    0x90: "topic name invalid",
    0x91: "packet identifier in use",
    0x97: "quota exceeded",
    0x99: "payload format invalid",
}
_CONNACK_V311: Final = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorized",
}
_CONNACK_V5: Final = {
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


class ProtocolError(Exception):
    """The broker sent something this client cannot read."""


class ConnectRefused(Exception):
    """The broker answered CONNECT with a refusal."""


@dataclass(frozen=True, slots=True)
class ConnAck:
    receive_maximum: int = 65535
    maximum_packet_size: int = MAX_PACKET_SIZE
    maximum_qos: int = 2
    retain_available: bool = True
    server_keepalive: int | None = None


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
        variable += b"\x00"  # no properties
    body = variable + payload
    return b"\x10" + encode_varint(len(body)) + body


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
    """Read an MQTT 5 property block; return the properties and bytes consumed."""
    length, offset = _read_varint(data, 0)
    end = offset + length
    properties: dict[int, object] = {}
    while offset < end:
        identifier, offset = _read_varint(data, offset)
        kind = _PROPERTY_KINDS.get(identifier)
        value: object
        if kind == _BYTE:
            value, offset = data[offset], offset + 1
        elif kind == _U16:
            value, offset = int.from_bytes(data[offset : offset + 2]), offset + 2
        elif kind == _U32:
            value, offset = int.from_bytes(data[offset : offset + 4]), offset + 4
        elif kind == _VARINT:
            value, offset = _read_varint(data, offset)
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


def _read_varint(data: memoryview | bytearray, offset: int) -> tuple[int, int]:
    value = shift = 0
    for index in range(offset, min(offset + 4, len(data))):
        byte = data[index]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, index + 1
        shift += 7
    if len(data) - offset >= 4:
        raise ProtocolError("malformed variable byte integer")
    raise IndexError  # incomplete: wait for more bytes


def _reason_text(code: int, reason_string: object) -> str:
    name = _REASON_NAMES.get(code, "error")
    detail = (
        f": {reason_string.decode(errors='replace')}" if isinstance(reason_string, bytes) else ""
    )
    return f"broker refused the message: {name} (0x{code:02x}){detail}"


_JOB_ID_PAIR_KEY: Final = b"\x26" + _string(JOB_ID_PROPERTY)  # user property, its key


class _Batch:
    """One publish() call: its messages, their outcomes, and the future that returns them."""

    __slots__ = ("future", "jobs", "outcomes", "remaining")

    def __init__(self, jobs: Sequence[Job], future: asyncio.Future[list[Outcome]]) -> None:
        self.jobs = jobs
        self.outcomes: list[Outcome | None] = [None] * len(jobs)
        self.remaining = len(jobs)
        self.future = future

    def settle(self, index: int, outcome: Outcome) -> None:
        if self.outcomes[index] is not None:
            return
        self.outcomes[index] = outcome
        self.remaining -= 1
        if not self.remaining and not self.future.done():
            self.future.set_result(self.outcomes)  # type: ignore[arg-type]  # all set now


class _InFlight:
    __slots__ = ("acknowledged", "batch", "index")

    def __init__(self, batch: _Batch, index: int) -> None:
        self.batch = batch
        self.index = index
        self.acknowledged = False  # QoS 2: PUBREC came, PUBCOMP pending


class MqttConnection(asyncio.Protocol):
    """One broker connection. Create with `open_connection`; publish with `publish`."""

    def __init__(self, version: int, inflight_limit: int) -> None:
        self.version = version
        self._inflight_limit = inflight_limit
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.connack: asyncio.Future[ConnAck] = self._loop.create_future()
        self.closed: asyncio.Future[str] = self._loop.create_future()
        self._limits = ConnAck()
        self._window = inflight_limit
        self._inflight: dict[int, _InFlight] = {}  # insertion order = send order
        # Encoded messages waiting for room in the window: batch, index, head, tail.
        self._waiting: collections.deque[tuple[_Batch, int, bytes, bytes]] = collections.deque()
        self._next_packet_id = 1
        self._writing_paused = False
        self._broker_reason = ""
        self._refused_last = False  # the last ack was a refusal (Mosquitto may hang up next)
        self._acknowledge_now: Callable[[], None] | None = None  # see data_received
        self.last_received = time.monotonic()

    # -- asyncio.Protocol -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # create_connection: TCP/TLS
        sock = transport.get_extra_info("socket")  # with TLS too: the TCP socket
        if _TCP_QUICKACK is not None and sock is not None:
            self._acknowledge_now = functools.partial(
                sock.setsockopt, socket.IPPROTO_TCP, _TCP_QUICKACK, 1
            )

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._fill_window()

    def data_received(self, data: bytes) -> None:
        self.last_received = time.monotonic()
        if self._acknowledge_now is not None:
            # Acknowledge the broker's bytes now, not after the kernel's delayed-ACK wait:
            # a broker with Nagle on (Mosquitto's default) holds its next PUBACKs until
            # then. Measured: the last PUBACKs of a batch 15-17 ms after it, 1-3 ms with.
            # The flag does not stay set, so it is set again on every read.
            with contextlib.suppress(OSError):
                self._acknowledge_now()
        buffer = self._buffer
        buffer += data
        offset = 0
        view = memoryview(buffer)
        try:
            while len(buffer) - offset >= 2:
                try:
                    length, body_start = _read_varint(view, offset + 1)
                except IndexError:
                    break
                end = body_start + length
                if end > len(buffer):
                    break
                self._handle(buffer[offset], view[body_start:end])
                offset = end
        except ProtocolError as exc:
            view.release()
            self._fail(f"protocol error: {exc}")
            return
        view.release()
        del buffer[:offset]
        self._fill_window()

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self._broker_reason or (f"connection lost: {exc}" if exc else "connection closed")
        self._settle_all_after_loss(reason)
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(reason))
        if not self.closed.done():
            self.closed.set_result(reason)

    # -- public ----------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self.closed.done()

    @property
    def limits(self) -> ConnAck:
        return self._limits

    def outstanding(self) -> int:
        return len(self._inflight) + len(self._waiting)

    def publish(self, jobs: Sequence[Job]) -> asyncio.Future[list[Outcome]]:
        """Queue `jobs` for publishing; the future gives each job's outcome, in order."""
        batch = _Batch(jobs, self._loop.create_future())
        if not jobs:
            batch.future.set_result([])
            return batch.future
        if not self.is_open:
            for index in range(len(jobs)):
                batch.settle(index, Outcome(Delivery.NOT_SENT, "broker_down", "not connected"))
            return batch.future
        waiting = self._waiting
        for index, job in enumerate(jobs):
            encoded = self._encode_publish(job)
            if isinstance(encoded, Outcome):
                batch.settle(index, encoded)
            else:
                waiting.append((batch, index, *encoded))
        self._fill_window()
        return batch.future

    def send(self, packet: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(packet)

    def ping(self) -> None:
        if self.is_open and self._transport is not None:
            self._transport.write(b"\xc0\x00")

    def disconnect(self) -> None:
        """Say goodbye and close; what is still unacknowledged is released as not sent."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"\xe0\x00")
            self._transport.close()

    def abort(self, reason: str) -> None:
        self._fail(reason)

    # -- internals ----------------------------------------------------------------

    def _encode_publish(self, job: Job) -> tuple[bytes, bytes] | Outcome:
        """The PUBLISH packet for `job` in two parts, to be written with its packet id
        (QoS 1/2) between them; or why it can never be published (a REJECTED outcome).

        Encoded once, here: its real size is what the broker's limit is checked against.
        """
        problem = topic_problem(job.topic)
        if problem is not None:
            return Outcome(Delivery.REJECTED, "invalid_topic", problem)
        qos = job.qos
        if qos not in (0, 1, 2):
            return Outcome(Delivery.REJECTED, "invalid_qos", f"qos {qos} is not 0, 1 or 2")
        limits = self._limits
        if qos > limits.maximum_qos:
            return Outcome(
                Delivery.REJECTED,
                "qos_not_supported",
                f"broker supports QoS up to {limits.maximum_qos}",
            )
        if job.retain and not limits.retain_available:
            return Outcome(
                Delivery.REJECTED,
                "retain_not_supported",
                "broker does not support retained messages",
            )
        topic = _string(job.topic.encode())
        tail = job.payload.encode()
        if self.version == PROTOCOL_V5:
            pair = _JOB_ID_PAIR_KEY + _string(str(job.id).encode())
            tail = encode_varint(len(pair)) + pair + tail
        remaining = len(topic) + (2 if qos else 0) + len(tail)
        head = bytes((0x30 | qos << 1 | job.retain,)) + encode_varint(remaining) + topic
        size = len(head) + remaining - len(topic)
        if size > limits.maximum_packet_size:
            return Outcome(
                Delivery.REJECTED,
                "packet_too_large",
                f"message is {size} bytes; the broker accepts at most {limits.maximum_packet_size}",
            )
        return head, tail

    def _allocate_packet_id(self) -> int:
        packet_id = self._next_packet_id
        while packet_id in self._inflight:
            packet_id = packet_id % 65535 + 1
        self._next_packet_id = packet_id % 65535 + 1
        return packet_id

    def _fill_window(self) -> None:
        """Write as many waiting messages as the in-flight window allows, in one write."""
        transport = self._transport
        if transport is None or self.closed.done() or self._writing_paused or not self._waiting:
            return
        chunks: list[bytes] = []
        written_qos0: list[tuple[_Batch, int]] = []
        waiting, inflight = self._waiting, self._inflight
        while waiting and len(inflight) < self._window:
            batch, index, head, tail = waiting.popleft()
            if batch.jobs[index].qos == 0:
                chunks += (head, tail)
                written_qos0.append((batch, index))
                continue
            packet_id = self._allocate_packet_id()
            inflight[packet_id] = _InFlight(batch, index)
            chunks += (head, packet_id.to_bytes(2), tail)
        transport.write(b"".join(chunks))
        for batch, index in written_qos0:
            batch.settle(index, PUBLISHED)

    def _handle(self, header: int, body: memoryview) -> None:
        kind = header >> 4
        if kind == 4:  # PUBACK
            self._settle_ack(body, final=True)
        elif kind == 5:  # PUBREC
            self._settle_ack(body, final=False)
        elif kind == 7:  # PUBCOMP
            self._settle_ack(body, final=True)
        elif kind == 13:  # PINGRESP
            pass
        elif kind == 2:  # CONNACK
            self._handle_connack(body)
        elif kind == 14:  # DISCONNECT from the broker (MQTT 5)
            code = body[0] if len(body) else 0
            reason = "unspecified" if len(body) < 2 else ""
            if len(body) > 1:
                properties, _ = decode_properties(body[1:])
                raw = properties.get(0x1F)
                reason = raw.decode(errors="replace") if isinstance(raw, bytes) else ""
            self._broker_reason = f"broker disconnected: reason 0x{code:02x} {reason}".strip()
            if self._transport is not None:
                self._transport.close()
        else:
            raise ProtocolError(f"unexpected packet type {kind}")

    def _settle_ack(self, body: memoryview, *, final: bool) -> None:
        packet_id = int.from_bytes(body[0:2])
        code = body[2] if len(body) > 2 else 0
        entry = self._inflight.get(packet_id)
        if entry is None:
            return  # an ack for a message we already gave up on
        self._refused_last = code >= 0x80
        if code >= 0x80:
            del self._inflight[packet_id]
            reason_string = None
            if len(body) > 3:
                reason_string = decode_properties(body[3:])[0].get(0x1F)
            delivery = Delivery.REJECTED if code in _PERMANENT_REFUSALS else Delivery.FAILED
            entry.batch.settle(
                entry.index,
                Outcome(delivery, f"broker_0x{code:02x}", _reason_text(code, reason_string)),
            )
            return
        if final:
            del self._inflight[packet_id]
            entry.batch.settle(entry.index, PUBLISHED)
            return
        entry.acknowledged = True  # PUBREC: release with PUBREL, wait for PUBCOMP
        if self._transport is not None:
            self._transport.write(b"\x62\x02" + packet_id.to_bytes(2))

    def _handle_connack(self, body: memoryview) -> None:
        code = body[1]
        if self.version == PROTOCOL_V5:
            properties, _ = decode_properties(body[2:]) if len(body) > 2 else ({}, 0)
            if code >= 0x80:
                self._refuse(_CONNACK_V5.get(code, f"reason 0x{code:02x}"))
                return
            limits = ConnAck(
                receive_maximum=int(properties.get(0x21, 65535)),  # type: ignore[call-overload]
                maximum_packet_size=int(properties.get(0x27, MAX_PACKET_SIZE)),  # type: ignore[call-overload]
                maximum_qos=int(properties.get(0x24, 2)),  # type: ignore[call-overload]
                retain_available=bool(properties.get(0x25, 1)),
                server_keepalive=properties.get(0x13),  # type: ignore[arg-type]
            )
        else:
            if code != 0:
                self._refuse(_CONNACK_V311.get(code, f"return code {code}"))
                return
            limits = ConnAck()
        self._limits = limits
        self._window = max(1, min(self._inflight_limit, limits.receive_maximum))
        if not self.connack.done():
            self.connack.set_result(limits)

    def _refuse(self, reason: str) -> None:
        if not self.connack.done():
            self.connack.set_exception(ConnectRefused(f"broker refused the connection: {reason}"))
        self._broker_reason = f"broker refused the connection: {reason}"
        if self._transport is not None:
            self._transport.close()

    def _fail(self, reason: str) -> None:
        self._broker_reason = self._broker_reason or reason
        if self._transport is not None:
            self._transport.abort()

    def _settle_all_after_loss(self, reason: str) -> None:
        """The connection is gone: nothing unacknowledged can be trusted to have arrived.

        The oldest message still waiting for PUBACK/PUBREC is the likeliest reason the
        broker hung up (Mosquitto closes the connection on an oversized or malformed
        PUBLISH): it is charged a failed attempt, so a row that kills every connection
        goes dead after the configured attempts. Everything else is released untouched.
        When the broker's last word was a refusal (Mosquitto refuses a `$SYS` publish,
        then hangs up), that refusal explains the loss and nobody else is charged.
        """
        suspect = None
        if not self._refused_last:
            suspect = next((p for p, e in self._inflight.items() if not e.acknowledged), None)
        for packet_id, entry in self._inflight.items():
            if packet_id == suspect:
                outcome = Outcome(
                    Delivery.FAILED,
                    "connection_lost",
                    f"{reason} (while this message was the oldest awaiting an ack)",
                )
            else:
                outcome = Outcome(Delivery.NOT_SENT, "connection_lost", reason)
            entry.batch.settle(entry.index, outcome)
        self._inflight.clear()
        while self._waiting:
            batch, index, _, _ = self._waiting.popleft()
            batch.settle(index, Outcome(Delivery.NOT_SENT, "connection_lost", reason))
