"""A publish-only MQTT 3.1.1 / 5 connection on asyncio, owning its whole lifecycle.

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
    CONNACK_V5_NAMES,
    CONNACK_V311_NAMES,
    DISCONNECT,
    PINGREQ,
    PROTOCOL_V5,
    ConnAck,
    Message,
    decode_connack_limits,
    encode_connect,
    encode_publish,
    encode_pubrel,
    read_varint,
    reason_string,
    topic_problem,
)
from jobpub.mqtt.errors import (
    AckTimeout,
    ConnectionLost,
    ConnectRefused,
    MqttError,
    ProtocolError,
    Unsendable,
)

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
    __slots__ = ("acknowledged", "batch", "index", "sent_at")

    def __init__(self, batch: _Batch, index: int, sent_at: float) -> None:
        self.batch = batch
        self.index = index
        self.sent_at = sent_at  # its ack deadline runs from here
        self.acknowledged = False  # QoS 2: PUBREC came, PUBCOMP pending


class _Wire(asyncio.Protocol):
    """The socket side: writes PUBLISH windows, reads acks, answers each message."""

    def __init__(self, version: int, inflight_limit: int, ack_timeout: float) -> None:
        self.version = version
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
                end = body_start + length
                if end > len(buffer):
                    break
                self._handle(buffer[offset], view[body_start:end])
                offset = end
        except ProtocolError as exc:
            view.release()
            self.fail(ConnectionLost(f"protocol error: {exc}"))
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
        now = self._loop.time()
        while waiting and len(inflight) < self._window:
            batch, index, head, tail = waiting.popleft()
            if not head[0] & 0x06:  # QoS 0: no packet id, no ack
                chunks += (head, tail)
                written_qos0.append((batch, index))
                continue
            packet_id = self._allocate_packet_id()
            inflight[packet_id] = _InFlight(batch, index, now)
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
        kind = header >> 4
        if kind == 4:  # PUBACK
            self._answer(body, final=True)
        elif kind == 5:  # PUBREC
            self._answer(body, final=False)
        elif kind == 7:  # PUBCOMP
            self._answer(body, final=True)
        elif kind == 13:  # PINGRESP
            pass
        elif kind == 2:  # CONNACK
            self._handle_connack(body)
        elif kind == 14:  # DISCONNECT from the broker (MQTT 5)
            code = body[0] if len(body) else 0
            text = reason_string(body[1:]) if len(body) > 1 else "unspecified"
            self._failure = self._failure or ConnectionLost(
                f"broker disconnected: reason 0x{code:02x} {text}".strip()
            )
            if self._transport is not None:
                self._transport.close()
        else:
            raise ProtocolError(f"unexpected packet type {kind}")

    def _answer(self, body: memoryview, *, final: bool) -> None:
        packet_id = int.from_bytes(body[0:2])
        code = body[2] if len(body) > 2 else 0
        entry = self._inflight.get(packet_id)
        if entry is None:
            return  # an ack for a message we already gave up on
        self._refused_last = code >= 0x80
        if code >= 0x80 or final:
            del self._inflight[packet_id]
            if code == 0 and len(body) <= 3:
                entry.batch.settle(entry.index, ACCEPTED)
            else:
                text = reason_string(body[3:]) if len(body) > 3 else ""
                entry.batch.settle(entry.index, Answer(code, text))
            return
        entry.acknowledged = True  # PUBREC: release with PUBREL, wait for PUBCOMP
        if self._transport is not None:
            self._transport.write(encode_pubrel(packet_id))

    def _handle_connack(self, body: memoryview) -> None:
        code = body[1]
        if self.version == PROTOCOL_V5:
            if code >= 0x80:
                self._refuse(code, CONNACK_V5_NAMES.get(code, f"reason 0x{code:02x}"))
                return
            limits = decode_connack_limits(body)
        else:
            if code != 0:
                self._refuse(code, CONNACK_V311_NAMES.get(code, f"return code {code}"))
                return
            limits = ConnAck()
        self.limits = limits
        self._window = max(1, min(self._inflight_limit, limits.receive_maximum))
        if not self.connack.done():
            self.connack.set_result(limits)

    def _refuse(self, code: int, reason: str) -> None:
        refusal = ConnectRefused(code, reason)
        if not self.connack.done():
            self.connack.set_exception(refusal)
        self._failure = self._failure or refusal
        if self._transport is not None:
            self._transport.close()

    def _answer_all_after_loss(self, failure: MqttError) -> None:
        """The connection is gone: no unanswered message can be trusted to have arrived.

        Each gets a ConnectionLost saying what is known of it: sent or not, and whether
        it was the oldest awaiting its first ack (Mosquitto hangs up on an oversized or
        malformed PUBLISH, so that one is the likeliest cause). Whom to charge is the
        publisher's decision.
        """
        reason = str(failure)
        kind = type(failure) if isinstance(failure, ConnectionLost) else ConnectionLost
        after_refusal = self._refused_last
        sent = kind(reason, sent=True, after_refusal=after_refusal)
        suspect = next((p for p, e in self._inflight.items() if not e.acknowledged), None)
        for packet_id, entry in self._inflight.items():
            if packet_id == suspect:
                answer = kind(
                    reason, sent=True, oldest_unanswered=True, after_refusal=after_refusal
                )
            else:
                answer = sent
            entry.batch.settle(entry.index, answer)
        self._inflight.clear()
        unsent = kind(reason, after_refusal=after_refusal)
        while self._waiting:
            batch, index, _, _ = self._waiting.popleft()
            batch.settle(index, unsent)


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
    ) -> None:
        self._host, self._port, self._tls = host, port, tls
        self._client_id, self._protocol = client_id, protocol
        self._username, self._password = username, password
        self._keepalive, self._ack_timeout, self._inflight = keepalive, ack_timeout, inflight
        self._connect_timeout, self._close_timeout = connect_timeout, close_timeout
        self._wire: _Wire | None = None
        self._keepalive_task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, wire = await loop.create_connection(
                    lambda: _Wire(self._protocol, self._inflight, self._ack_timeout),
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
                try:
                    await wire.connack
                except BaseException:
                    wire.fail(ConnectionLost("connect failed"))
                    raise
        except TimeoutError as exc:
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
