"""An MQTT 3.1.1 / 5 connection on asyncio, owning its whole lifecycle: it publishes,
and may hold a subscription whose messages it hands to a callback.

Why our own and not aiomqtt: aiomqtt 2.5 discards the PUBACK reason code, so a
broker's refusal (MQTT 5 "not authorized", "quota exceeded") looks like success.
It also awaits each message on its own. This connection writes a window of PUBLISH
packets in one write, answers each message by its packet id with the broker's
verdict, and honours the broker's Receive Maximum, Maximum QoS, Retain Available
and Maximum Packet Size.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import socket
import ssl
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final, NamedTuple, Self

from jobpub.mqtt.codec import (
    CONNACK,
    DISCONNECT,
    DISCONNECT_TYPE,
    PACKET_NAMES,
    PINGREQ,
    PINGRESP,
    PROTOCOL_V5,
    PROTOCOL_V311,
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    RECEIVE_MAXIMUM_PACKET_SIZE,
    SUBACK,
    ConnAck,
    InboundMessage,
    Message,
    decode_connack,
    decode_disconnect,
    decode_publish,
    decode_publish_id,
    decode_suback,
    encode_ack,
    encode_connect,
    encode_publish,
    encode_pubrel,
    encode_pubrel_not_found,
    encode_subscribe,
    read_varint,
    reason_string,
    topic_problem,
)
from jobpub.mqtt.errors import (
    AckTimeout,
    ConnectionLost,
    ConnectRefused,
    MqttError,
    NoConnAck,
    ProtocolError,
    SubscribeRefused,
    Unsendable,
)

# SUBACK refusals: MQTT 3.1.1 has only 0x80; MQTT 5 names the reason.
SUBACK_NAMES: Final = {
    0x80: "unspecified error",
    0x83: "implementation specific error",
    0x87: "not authorized",
    0x8F: "topic filter invalid",
    0x91: "packet identifier in use",
    0x97: "quota exceeded",
    0x9E: "shared subscriptions not supported",
    0xA1: "subscription identifiers not supported",
    0xA2: "wildcard subscriptions not supported",
}
_TCP_QUICKACK: Final = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class Answer(NamedTuple):
    """The broker's answer to one message: an MQTT 5 reason code (below 0x80: accepted)
    and its Reason String. MQTT 3.1.1 acks carry neither: they read as success."""

    reason_code: int = 0
    reason_string: str = ""

    @property
    def accepted(self) -> bool:
        return self.reason_code < 0x80


ACCEPTED: Final = Answer()  # the common answer, shared: acks without a reason allocate nothing
Result = Answer | MqttError  # what `publish` gives for each message
# Called with each message the broker delivers on a subscription, before it is acked.
OnMessage = Callable[[InboundMessage], None]


class _Batch:
    """One publish() call: its results, and the future that returns them.

    It keeps no reference to the messages: they die as soon as they are encoded, so
    a backlog in flight holds only bytes (and the garbage collector has less to scan;
    measured: with the messages kept, the publish path took half as long again).
    """

    __slots__ = ("future", "remaining", "results")

    def __init__(self, count: int, future: asyncio.Future[list[Result]]) -> None:
        self.results: list[Result | None] = [None] * count
        self.remaining = count
        self.future = future

    def settle(self, index: int, result: Result) -> None:
        if self.results[index] is not None:
            return
        self.results[index] = result
        self.remaining -= 1
        if not self.remaining and not self.future.done():
            self.future.set_result(self.results)  # type: ignore[arg-type]  # all set now


class _InFlight:
    __slots__ = ("awaiting", "batch", "index", "sent_at")

    def __init__(self, batch: _Batch, index: int, sent_at: float, awaiting: int) -> None:
        self.batch = batch
        self.index = index
        self.sent_at = sent_at  # its ack deadline runs from here
        # The packet type the broker owes next: PUBACK (QoS 1), PUBREC (QoS 2), then
        # PUBCOMP once PUBREC came. Any other ack for this id breaks the protocol.
        self.awaiting = awaiting


class _Wire(asyncio.Protocol):
    """The socket side: writes PUBLISH windows, reads acks, answers each message."""

    def __init__(
        self,
        version: int,
        inflight_limit: int,
        ack_timeout: float,
        on_message: OnMessage | None = None,
    ) -> None:
        self.version = version
        self._on_message = on_message
        # SUBSCRIBEs awaiting their SUBACK, by packet id (ids shared with publishing).
        self._subscribing: dict[int, asyncio.Future[list[int]]] = {}
        self._inflight_limit = inflight_limit
        self._ack_timeout = ack_timeout
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self.connack: asyncio.Future[ConnAck] = self._loop.create_future()
        self.closed: asyncio.Future[MqttError] = self._loop.create_future()
        self.limits = ConnAck()
        self._window = inflight_limit
        self._inflight: dict[int, _InFlight] = {}  # insertion order = send order
        # Encoded messages waiting for room in the window: batch, index, head, tail.
        self._waiting: collections.deque[tuple[_Batch, int, bytes, bytes]] = collections.deque()
        self._next_packet_id = 1
        self._writing_paused = False
        self._failure: MqttError | None = None  # why the connection ends, once known
        self._refused_last = False  # the last ack was a refusal (Mosquitto may hang up next)
        self._acknowledge_now: Callable[[], None] | None = None  # see data_received
        self._deadline: asyncio.TimerHandle | None = None  # the oldest message's ack deadline
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
                    length, body_start = read_varint(view, offset + 1)
                except IndexError:
                    break
                if length > RECEIVE_MAXIMUM_PACKET_SIZE:
                    _refuse_oversized(length)
                end = body_start + length
                if end > len(buffer):
                    break
                body = view[body_start:end]
                try:
                    self._handle(buffer[offset], body)
                finally:
                    # Released here, not when garbage-collected: a traceback kept by the
                    # transport (a write that failed in _handle) would otherwise hold it,
                    # and the buffer could not be resized below.
                    body.release()
                offset = end
        except ProtocolError as exc:
            view.release()
            self.fail(ConnectionLost(f"protocol error: {exc}", protocol_error=True))
            return
        view.release()
        del buffer[:offset]
        self._fill_window()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        failure = self._failure or ConnectionLost(
            f"connection lost: {exc}" if exc else "connection closed"
        )
        self._failure = failure
        self._answer_all_after_loss(failure)
        for waiter in self._subscribing.values():
            if not waiter.done():
                waiter.set_exception(failure)
        self._subscribing.clear()
        if not self.connack.done():
            self.connack.set_exception(failure)
        if not self.closed.done():
            self.closed.set_result(failure)

    # -- used by MqttConnection ---------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self.closed.done()

    def outstanding(self) -> int:
        return len(self._inflight) + len(self._waiting)

    def publish(self, messages: Sequence[Message]) -> asyncio.Future[list[Result]]:
        batch = _Batch(len(messages), self._loop.create_future())
        if not messages:
            batch.future.set_result([])
            return batch.future
        if not self.is_open:
            failure = self._failure or ConnectionLost("not connected")
            for index in range(len(messages)):
                batch.settle(index, failure)
            return batch.future
        waiting = self._waiting
        for index, message in enumerate(messages):
            encoded = self._encode(message)
            if isinstance(encoded, Unsendable):
                batch.settle(index, encoded)
            else:
                waiting.append((batch, index, *encoded))
        self._fill_window()
        return batch.future

    def subscribe(self, topic_filter: str, qos: int) -> asyncio.Future[list[int]]:
        """Send SUBSCRIBE; the future gives SUBACK's codes, or the connection's failure."""
        waiter: asyncio.Future[list[int]] = self._loop.create_future()
        if not self.is_open:
            waiter.set_exception(self._failure or ConnectionLost("not connected"))
            return waiter
        packet_id = self._allocate_packet_id()
        self._subscribing[packet_id] = waiter
        self.send(encode_subscribe(packet_id, topic_filter, qos, self.version))
        return waiter

    def send(self, packet: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(packet)

    def disconnect(self) -> None:
        """Say goodbye and close; what is still unanswered gets ConnectionLost."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(DISCONNECT)
            self._transport.close()

    def fail(self, failure: MqttError) -> None:
        """Drop the connection at once; `failure` is why, for every unanswered message."""
        self._failure = self._failure or failure
        if self._transport is not None:
            self._transport.abort()

    # -- internals ----------------------------------------------------------------

    def _encode(self, message: Message) -> tuple[bytes, bytes] | Unsendable:
        """Encoded once, here: its real size is what the broker's limit is checked against."""
        problem = topic_problem(message.topic)
        if problem is not None:
            return Unsendable(0x90, problem)
        limits = self.limits
        if message.qos not in (0, 1, 2):  # QoS 3 makes a malformed packet
            return Unsendable(0x81, f"qos {message.qos} is not 0, 1 or 2")
        if message.qos > limits.maximum_qos:
            return Unsendable(0x9B, f"broker supports QoS up to {limits.maximum_qos}")
        if message.retain and not limits.retain_available:
            return Unsendable(0x9A, "broker does not support retained messages")
        head, tail = encode_publish(message, self.version)
        size = len(head) + len(tail) + (2 if message.qos else 0)
        if size > limits.maximum_packet_size:
            return Unsendable(
                0x95,
                f"message is {size} bytes; the broker accepts at most {limits.maximum_packet_size}",
            )
        return head, tail

    def _allocate_packet_id(self) -> int:
        packet_id = self._next_packet_id
        while packet_id in self._inflight or packet_id in self._subscribing:
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
        now = self._loop.time()
        while waiting and len(inflight) < self._window:
            batch, index, head, tail = waiting.popleft()
            if not head[0] & 0x06:  # QoS 0: no packet id, no ack
                chunks += (head, tail)
                written_qos0.append((batch, index))
                continue
            packet_id = self._allocate_packet_id()
            # QoS 1 (0x02): PUBACK is owed; QoS 2 (0x04): PUBREC.
            inflight[packet_id] = _InFlight(batch, index, now, PUBACK + (head[0] >> 2 & 1))
            chunks += (head, packet_id.to_bytes(2), tail)
        transport.write(b"".join(chunks))
        if self._deadline is None and inflight:
            self._deadline = self._loop.call_at(now + self._ack_timeout, self._check_deadline)
        for batch, index in written_qos0:
            batch.settle(index, ACCEPTED)

    def _check_deadline(self) -> None:
        """One timer at a time, set for the oldest unanswered message: messages go out in
        order with one timeout, so no younger one can expire first."""
        self._deadline = None
        oldest = next(iter(self._inflight.values()), None)
        if oldest is None:
            return
        expires_at = oldest.sent_at + self._ack_timeout
        if self._loop.time() >= expires_at:
            self.fail(
                AckTimeout(f"no ack from the broker within {self._ack_timeout:g}s of sending")
            )
        else:
            self._deadline = self._loop.call_at(expires_at, self._check_deadline)

    def _handle(self, header: int, body: memoryview) -> None:
        """One whole packet from the broker. ProtocolError: it breaks the protocol."""
        kind = header >> 4
        if kind == 4:  # PUBACK, first: one per QoS 1 message (literal: no global lookup)
            self._answer(4, body)
        elif kind in (PUBREC, PUBCOMP):
            self._answer(kind, body)
        elif kind == PINGRESP:
            pass
        elif kind == CONNACK:
            self._handle_connack(body)
        elif kind == DISCONNECT_TYPE and self.version == PROTOCOL_V5:
            self._handle_disconnect(body)
        elif kind in (PUBLISH, PUBREL, SUBACK):
            self._handle_subscription(header, body)
        else:
            raise ProtocolError(f"unexpected packet type {kind}")

    def _handle_subscription(self, header: int, body: memoryview) -> None:
        """What a subscription brings: messages for us, their QoS 2 release, SUBACK."""
        kind = header >> 4
        if kind == PUBLISH:
            # A message for us: handed to the callback (if there is none, as for a broker's
            # auto-subscription, dropped), then acknowledged. The callback only queues it.
            if self._on_message is not None:
                message, packet_id = decode_publish(header, body, self.version)
                self._on_message(message)
            else:  # a publishing connection reads no further than it must
                packet_id = decode_publish_id(header, body)
            if packet_id is not None:
                self.send(encode_ack(PUBACK if header & 0x06 == 0x02 else PUBREC, packet_id))
        elif kind == SUBACK:
            packet_id, codes = decode_suback(body, self.version)
            waiter = self._subscribing.pop(packet_id, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(codes)
        elif kind == PUBREL:  # the second step of a QoS 2 message for us
            if len(body) < 2:
                raise ProtocolError("PUBREL shorter than a packet id")
            self.send(encode_ack(PUBCOMP, int.from_bytes(body[0:2])))

    def _answer(self, kind: int, body: memoryview) -> None:
        """PUBACK, PUBREC or PUBCOMP: the broker's answer to one of our messages."""
        if len(body) < 2:
            raise ProtocolError(f"{PACKET_NAMES[kind]} shorter than a packet id")
        packet_id = int.from_bytes(body[0:2])
        code = body[2] if len(body) > 2 else 0
        entry = self._inflight.get(packet_id)
        if entry is None:
            if kind == PUBREC:
                # The broker holds a QoS 2 message we do not: release its state.
                self.send(encode_pubrel_not_found(packet_id, self.version))
            return  # PUBACK/PUBCOMP: an ack for a message we already gave up on
        if kind != entry.awaiting:
            if kind == PUBREC and entry.awaiting == PUBCOMP:
                self.send(encode_pubrel(packet_id))  # a repeated PUBREC: release again
                return
            raise ProtocolError(
                f"{PACKET_NAMES[kind]} for packet {packet_id}, "
                f"which awaits {PACKET_NAMES[entry.awaiting]}"
            )
        self._refused_last = code >= 0x80
        if code >= 0x80 or kind != PUBREC:
            if code == 0 and len(body) <= 3:
                answer = ACCEPTED
            else:  # read before the entry goes: a malformed block leaves it in flight
                answer = Answer(code, reason_string(body[3:]) if len(body) > 3 else "")
            del self._inflight[packet_id]
            entry.batch.settle(entry.index, answer)
            return
        entry.awaiting = PUBCOMP  # PUBREC: release with PUBREL, wait for PUBCOMP
        if self._transport is not None:
            self._transport.write(encode_pubrel(packet_id))

    def _handle_connack(self, body: memoryview) -> None:
        if self.connack.done():
            raise ProtocolError("a second CONNACK")
        try:
            limits = decode_connack(body, self.version)
        except ConnectRefused as refusal:
            self._failure = self._failure or refusal
            self.connack.set_exception(refusal)
            if self._transport is not None:
                self._transport.close()
            return
        self.limits = limits
        self._window = max(1, min(self._inflight_limit, limits.receive_maximum))
        self.connack.set_result(limits)

    def _handle_disconnect(self, body: memoryview) -> None:
        disconnect = decode_disconnect(body)
        code = disconnect.reason_code
        self._failure = self._failure or ConnectionLost(
            f"broker disconnected: reason 0x{code:02x} {disconnect.reason_string}".strip(),
            disconnect_reason=code,
            server_reference=disconnect.server_reference,
        )
        if self._transport is not None:
            self._transport.close()

    def _answer_all_after_loss(self, failure: MqttError) -> None:
        """The connection is gone: no unanswered message can be trusted to have arrived.

        Each gets a ConnectionLost saying what is known of it: sent or not, and whether
        it was the oldest awaiting its first ack (Mosquitto hangs up on an oversized or
        malformed PUBLISH, so that one is the likeliest cause). Whom to charge is the
        publisher's decision.
        """
        lost = failure if isinstance(failure, ConnectionLost) else ConnectionLost(str(failure))
        after_refusal = self._refused_last

        def answer(*, sent: bool, oldest_unanswered: bool = False) -> ConnectionLost:
            return type(lost)(
                lost.reason,
                sent=sent,
                oldest_unanswered=oldest_unanswered,
                after_refusal=after_refusal,
                disconnect_reason=lost.disconnect_reason,
                protocol_error=lost.protocol_error,
                server_reference=lost.server_reference,
            )

        sent = answer(sent=True)
        suspect = next((p for p, e in self._inflight.items() if e.awaiting != PUBCOMP), None)
        for packet_id, entry in self._inflight.items():
            result = answer(sent=True, oldest_unanswered=True) if packet_id == suspect else sent
            entry.batch.settle(entry.index, result)
        self._inflight.clear()
        unsent = answer(sent=False)
        while self._waiting:
            batch, index, _, _ = self._waiting.popleft()
            batch.settle(index, unsent)


def _refuse_oversized(length: int) -> None:
    # The receive buffer stays bounded: MQTT 5 brokers were told this limit in CONNECT.
    raise ProtocolError(
        f"packet of {length} bytes, over the {RECEIVE_MAXIMUM_PACKET_SIZE} this client accepts"
    )


class MqttConnection:
    """One broker connection, open for the body of `async with`.

    Entering opens TCP (or TLS), sends CONNECT and waits for CONNACK; raises
    ConnectRefused, ConnectionLost or OSError. While open it pings to keep the
    connection alive and drops it (AckTimeout) when a message goes unanswered past
    `ack_timeout`; `closed` then resolves with why. Leaving disconnects cleanly.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str,
        protocol: int = PROTOCOL_V5,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        keepalive: int = 30,
        ack_timeout: float = 30.0,
        inflight: int = 1000,
        connect_timeout: float = 10.0,
        close_timeout: float = 2.0,
        on_message: OnMessage | None = None,
    ) -> None:
        if protocol == PROTOCOL_V311 and password is not None and username is None:
            # [MQTT-3.1.2-22]: a broker would drop every such CONNECT, forever.
            raise ValueError("MQTT 3.1.1 forbids a password without a user name")
        self._host, self._port, self._tls = host, port, tls
        self._client_id, self._protocol = client_id, protocol
        self._username, self._password = username, password
        self._keepalive, self._ack_timeout, self._inflight = keepalive, ack_timeout, inflight
        self._connect_timeout, self._close_timeout = connect_timeout, close_timeout
        self._on_message = on_message
        self._wire: _Wire | None = None
        self._keepalive_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        connected = False
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, wire = await loop.create_connection(
                    lambda: _Wire(
                        self._protocol, self._inflight, self._ack_timeout, self._on_message
                    ),
                    self._host,
                    self._port,
                    ssl=self._tls,
                )
                wire.send(
                    encode_connect(
                        self._protocol,
                        self._client_id,
                        self._keepalive,
                        self._username,
                        self._password,
                    )
                )
                connected = True
                try:
                    await wire.connack
                except BaseException:
                    wire.fail(ConnectionLost("connect failed"))
                    raise
        except TimeoutError as exc:
            if connected:
                message = f"no CONNACK within {self._connect_timeout:g}s of CONNECT"
                raise NoConnAck(message) from exc
            message = f"not connected within {self._connect_timeout:g}s"
            raise ConnectionLost(message) from exc
        self._wire = wire
        self._keepalive_task = loop.create_task(
            self._keep_alive(wire), name=f"mqtt-keepalive-{self._client_id}"
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        wire, task = self._wire, self._keepalive_task
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if wire is None:
            return
        wire.disconnect()
        try:
            # A peer that stops reading would hold a graceful close (and the exit)
            # forever: give it a moment, then cut.
            async with asyncio.timeout(self._close_timeout):
                await asyncio.shield(wire.closed)
        except TimeoutError:
            wire.fail(ConnectionLost("disconnect timed out"))

    @property
    def _open_wire(self) -> _Wire:
        if self._wire is None:
            raise RuntimeError("use the connection inside `async with`")
        return self._wire

    @property
    def is_open(self) -> bool:
        return self._wire is not None and self._wire.is_open

    @property
    def limits(self) -> ConnAck:
        """What the broker announced in CONNACK."""
        return self._open_wire.limits

    @property
    def closed(self) -> asyncio.Future[MqttError]:
        """Resolves, never raises, when the connection ends: with why it ended."""
        return self._open_wire.closed

    def outstanding(self) -> int:
        """Messages handed to `publish` and not yet answered."""
        return self._open_wire.outstanding()

    def publish(self, messages: Sequence[Message]) -> asyncio.Future[list[Result]]:
        """Send `messages` now (as the in-flight window allows); the future gives each
        one's result, in order: the broker's Answer (QoS 0: ACCEPTED once written),
        Unsendable, or ConnectionLost if the connection ended first. It never raises."""
        return self._open_wire.publish(messages)

    async def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        """Subscribe to `topic_filter`; the QoS the broker granted. Its messages go to
        `on_message`. SubscribeRefused if the broker refused it or did not answer within
        the ack timeout (the connection is then dropped); ConnectionLost if it ended."""
        wire = self._open_wire
        try:
            async with asyncio.timeout(self._ack_timeout):
                codes = await wire.subscribe(topic_filter, qos)
        except TimeoutError:
            wire.fail(AckTimeout(f"no SUBACK within {self._ack_timeout:g}s"))
            raise SubscribeRefused(None, f"no SUBACK within {self._ack_timeout:g}s") from None
        code = codes[0]
        if code >= 0x80:
            name = SUBACK_NAMES.get(code, f"code 0x{code:02x}")
            raise SubscribeRefused(code, f"broker refused the subscription: {name}")
        return code

    async def _keep_alive(self, wire: _Wire) -> None:
        """Ping every half keepalive; drop a connection whose broker stopped answering."""
        keepalive = wire.limits.server_keepalive or self._keepalive
        last_ping = time.monotonic()
        while not wire.closed.done():
            # Waiting on the future creates no task; a quarter keepalive is soon enough.
            await asyncio.wait([wire.closed], timeout=keepalive / 4)
            now = time.monotonic()
            silent_for = now - wire.last_received
            if silent_for > keepalive * 1.5:
                wire.fail(ConnectionLost(f"no answer to keepalive for {silent_for:.0f}s"))
                return
            if now - last_ping >= keepalive / 2:
                wire.send(PINGREQ)
                last_ping = now
