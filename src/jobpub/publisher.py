"""Delivery policy on one MQTT connection: a job becomes a message, an answer an outcome.

The protocol is `jobpub.mqtt`'s; what its answers mean for a row is decided here:
which refusals are final, which rows are never sent, and whom a lost connection is
charged to. `MqttPublisher.run` keeps the connection up and reconnects with backoff.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from jobpub.backoff import RECONNECT_MAX_S, Backoff
from jobpub.metrics import Metrics
from jobpub.models import PUBLISHED, Delivery, Job, Outcome
from jobpub.mqtt import (
    ACCEPTED,
    PROTOCOL_V5,
    PROTOCOL_V311,
    REASON_NAMES,
    UTF8_PAYLOAD,
    Answer,
    ConnectionLost,
    ConnectRefused,
    Message,
    MqttConnection,
    MqttError,
    NoConnAck,
    OnMessage,
    ProtocolVersionRefused,
    PublishProperties,
    Result,
    Unsendable,
)
from jobpub.waiting import wait_for_event

log = structlog.get_logger("jobpub.publisher")

CONNECT_TIMEOUT: Final = 10.0
DISCONNECT_TIMEOUT: Final = 2.0
JOB_ID_PROPERTY: Final = "jobpub-job-id"  # MQTT 5 user property: consumers de-duplicate by it
# A connection that stayed up this long was healthy: the next loss starts the reconnect
# backoff afresh. One that ends sooner (a broker that accepts, then drops: busy, quota,
# an ACL) keeps backing off, so a flapping broker never sees a tight reconnect loop.
STABLE_CONNECTION_S: Final = 10.0
# MQTT 5 DISCONNECT reasons that name a packet this client sent: malformed packet,
# protocol error, topic name invalid, packet too large, payload format invalid, retain
# not supported, QoS not supported. Only these charge the oldest unanswered message;
# any other (server shutting down, busy, quota, session taken over) charges none.
_PACKET_DISCONNECT_REASONS: Final = frozenset({0x81, 0x82, 0x90, 0x95, 0x99, 0x9A, 0x9B})
_PROTOCOL_NAMES: Final = {PROTOCOL_V5: "5", PROTOCOL_V311: "3.1.1"}

# MQTT 5 reason codes on PUBACK/PUBREC that no retry can fix: the row goes dead.
_PERMANENT_REFUSALS: Final = frozenset({0x87, 0x90, 0x99})
# What the connection found unsendable, by the reason code it named: metric labels.
_UNSENDABLE_REASONS: Final = {
    0x81: "invalid_qos",
    0x90: "invalid_topic",
    0x95: "packet_too_large",
    0x9A: "retain_not_supported",
    0x9B: "qos_not_supported",
}
_NOT_CONNECTED: Final = Outcome(Delivery.NOT_SENT, "broker_down", "not connected")
_NOT_ALLOWED: Final = Outcome(
    Delivery.REJECTED, "topic_not_allowed", "topic is outside JOBPUB_TOPIC_PREFIXES"
)
# The row's reason is written by the statement that marks it (queries.MARK_EXPIRED).
_EXPIRED: Final = Outcome(Delivery.EXPIRED, "expired", "expired before it was sent")
# Message Expiry Interval is a four-byte integer of seconds (about 136 years).
MAX_EXPIRY_INTERVAL: Final = 0xFFFF_FFFF
# The longest client id (bytes) MQTT 3.1.1 requires every broker to accept (MQTT-3.1.3-5).
MAX_PORTABLE_CLIENT_ID: Final = 23


@dataclass(frozen=True, slots=True)
class PublisherConfig:
    """What the publisher needs to reach the broker and judge rows; built by the app."""

    host: str
    port: int
    client_id: str
    protocol: str = "5"  # "5" or "3.1.1"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive: int = 30
    ack_timeout: float = 30.0
    inflight: int = 1000
    topic_prefixes: tuple[str, ...] = ()  # empty: every topic allowed

    @property
    def broker(self) -> str:
        """The broker for logs: never the password."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


def subscriber_client_id(client_id: str) -> str:
    """The publisher's client id marked `-sub`, in the 23 bytes every MQTT 3.1.1 broker
    must accept: a long id gives up the end of its random part, not the mark."""
    suffix = "-sub"
    head = client_id.encode()[: MAX_PORTABLE_CLIENT_ID - len(suffix)]
    return head.decode(errors="ignore") + suffix


class MqttPublisher:
    """Owns the broker connection: connects, keeps it up, reconnects with capped backoff."""

    def __init__(self, config: PublisherConfig, metrics: Metrics) -> None:
        self._config = config
        self._version = PROTOCOL_V5 if config.protocol == "5" else PROTOCOL_V311
        if self._version == PROTOCOL_V311 and config.password is not None and not config.username:
            raise ValueError("MQTT 3.1.1 forbids a password without a user name")
        # Why this process is trying MQTT 3.1.1 on a broker asked for MQTT 5, until a
        # 3.1.1 connection confirms it (then logged once); and whether that reason was
        # only a silence (no CONNACK), so a failed 3.1.1 attempt goes back to MQTT 5.
        self._fallback_reason: str | None = None
        self._fallback_tentative = False
        self._fallback_impossible_logged = False
        self._tls = _tls_context(config) if config.tls else None
        self._metrics = metrics
        self._connection: MqttConnection | None = None
        self._connected = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._connection is not None and self._connection.is_open

    async def wait_connected(self, timeout: float) -> bool:
        """Until connected, or `timeout`. Never returns False without yielding: the claim
        loop calls it in a loop, and must not starve `run`, which notices the loss."""
        if self._connected.is_set() and not self.connected:
            # The connection dropped a moment ago and `run` has not seen it yet.
            await asyncio.sleep(min(timeout, 0.01))
            return self.connected
        return await wait_for_event(self._connected, timeout)

    def publish(self, jobs: Sequence[Job]) -> asyncio.Future[list[Outcome]]:
        """Publish `jobs`; the future gives each one's outcome, in order."""
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        connection = self._connection
        if connection is None or not connection.is_open:
            future.set_result([_NOT_CONNECTED] * len(jobs))
            return future
        prefixes = self._config.topic_prefixes
        now = time.monotonic()
        sendable: Sequence[Job]
        # Outcomes decided here, without the broker (None: sent): a topic outside the
        # prefixes, or an expiry that passed while the job was held for its fire_at.
        kept: list[Outcome | None] | None = None
        if prefixes or any(job.expires is not None for job in jobs):
            kept = [_kept_back(job, prefixes, now) for job in jobs]
            sendable = [job for job, why in zip(jobs, kept, strict=True) if why is None]
        else:
            sendable = jobs
        # The hot path: one Message per job and nothing else (protocol checks are the
        # connection's; their answers come back as Unsendable).
        if self._version == PROTOCOL_V5:
            messages = [
                Message(
                    job.topic, job.payload.encode(), job.qos, job.retain,
                    ((JOB_ID_PROPERTY, str(job.id)),), UTF8_PAYLOAD,
                )
                if job.plain  # text payloads say so: PostgreSQL text is always UTF-8
                else _message_v5(job, now)
                for job in sendable
            ]  # fmt: skip
        else:
            # MQTT 3.1.1 has no properties: only topic, payload, QoS and retain go out.
            messages = [
                Message(
                    job.topic,
                    job.payload.encode() if job.payload_bytes is None else job.payload_bytes,
                    job.qos,
                    job.retain,
                )
                for job in sendable
            ]

        def judge(sent: asyncio.Future[list[Result]]) -> None:
            if future.done():  # the caller gave up on it (cancelled)
                return
            outcomes = [PUBLISHED if r is ACCEPTED else _outcome(r) for r in sent.result()]
            if kept is not None:
                sent_outcomes = iter(outcomes)
                outcomes = [next(sent_outcomes) if why is None else why for why in kept]
            future.set_result(outcomes)

        connection.publish(messages).add_done_callback(judge)
        return future

    async def run(self, stop: asyncio.Event) -> None:
        """Connect and stay connected until `stop`; then disconnect.

        Every reconnect waits a jittered, growing delay unless the connection before it
        lasted STABLE_CONNECTION_S: no broker sees a tight reconnect loop.
        """
        backoff = Backoff(initial=0.2, maximum=RECONNECT_MAX_S)
        last_error = ""
        broker = self._config.broker
        while not stop.is_set():
            try:
                async with self._new_connection() as connection:
                    last_error = ""
                    connected_at = time.monotonic()
                    reason = await self._serve(connection, stop)
            except (ProtocolVersionRefused, NoConnAck) as exc:
                if self._try_mqtt_311(exc):
                    continue  # at once: the broker is up and may speak only 3.1.1
                last_error = await self._wait_after_connect_failure(exc, backoff, last_error, stop)
                continue
            except (MqttError, OSError) as exc:
                self._end_tentative_fallback()
                last_error = await self._wait_after_connect_failure(exc, backoff, last_error, stop)
                continue
            if stop.is_set():
                log.info("broker_disconnected", broker=broker)
                return
            if time.monotonic() - connected_at >= STABLE_CONNECTION_S:
                backoff.reset()
            delay = backoff.next()
            self._metrics.broker_disconnects.inc()
            self._log_loss(reason, delay)
            await wait_for_event(stop, delay)

    def _try_mqtt_311(self, exc: ProtocolVersionRefused | NoConnAck) -> bool:
        """After an MQTT 5 CONNECT was refused for its version (a 3.1.1-only broker's
        return code 0x01) or went unanswered (amqtt misreads its properties and waits),
        try MQTT 3.1.1 next. True: reconnect at once with 3.1.1."""
        config = self._config
        if self._version != PROTOCOL_V5:
            self._end_tentative_fallback()
            return False
        if config.password is not None and not config.username:
            # MQTT 3.1.1 forbids a password without a user name: stay not ready, say why.
            if isinstance(exc, ProtocolVersionRefused) and not self._fallback_impossible_logged:
                self._fallback_impossible_logged = True
                log.error(
                    "broker_protocol_unsupported", broker=config.broker, error=str(exc),
                    fix="the broker speaks only MQTT 3.1.1: set JOBPUB_MQTT_USERNAME "
                    "and JOBPUB_MQTT_PROTOCOL=3.1.1",
                )  # fmt: skip
            return False
        self._version = PROTOCOL_V311
        self._fallback_reason = str(exc)
        self._fallback_tentative = isinstance(exc, NoConnAck)
        return True

    def _end_tentative_fallback(self) -> None:
        """A 3.1.1 attempt made only because MQTT 5 went unanswered failed too: the
        broker is slow or down, not 3.1.1-only; the next attempt is MQTT 5 again."""
        if self._fallback_reason is not None and self._fallback_tentative:
            self._version = PROTOCOL_V5
            self._fallback_reason = None

    def _confirm_fallback(self) -> None:
        """Connected with MQTT 3.1.1 after MQTT 5 failed: it sticks for this process."""
        if self._fallback_reason is None:
            return
        log.warning(
            "broker_protocol_fallback", broker=self._config.broker, protocol="3.1.1",
            error=self._fallback_reason,
            hint="the broker does not take MQTT 5; set JOBPUB_MQTT_PROTOCOL=3.1.1 to skip "
            "the attempt (3.1.1 carries no jobpub-job-id user property)",
        )  # fmt: skip
        self._fallback_reason = None

    async def _wait_after_connect_failure(
        self, exc: MqttError | OSError, backoff: Backoff, last_error: str, stop: asyncio.Event
    ) -> str:
        """Log a failed connect and wait before the next; the error, to compare next time."""
        delay = backoff.next()
        error = str(exc) or type(exc).__name__
        # One line per distinct failure, not one per retry: a wrong password
        # would otherwise fill the log every few seconds.
        report = log.warning if error != last_error else log.debug
        server_reference = exc.server_reference if isinstance(exc, ConnectRefused) else None
        report(
            "broker_connect_failed", broker=self._config.broker, error=error,
            retry_in_s=round(delay, 2),
            **({"server_reference": server_reference} if server_reference else {}),
        )  # fmt: skip
        await wait_for_event(stop, delay)
        return error

    def _log_loss(self, reason: MqttError | None, delay: float) -> None:
        broker, retry_in_s = self._config.broker, round(delay, 2)
        if isinstance(reason, ConnectionLost) and reason.protocol_error:
            log.error(
                "broker_protocol_error", broker=broker, error=str(reason), retry_in_s=retry_in_s
            )
            return
        extra: dict[str, object] = {}
        if isinstance(reason, ConnectionLost):
            if reason.disconnect_reason is not None:
                extra["disconnect_reason"] = f"0x{reason.disconnect_reason:02x}"
            if reason.server_reference:
                extra["server_reference"] = reason.server_reference
        log.warning(
            "broker_connection_lost", broker=broker, reason=str(reason or "stopping"),
            retry_in_s=retry_in_s, **extra,
        )  # fmt: skip

    def subscriber_connection(self, on_message: OnMessage) -> MqttConnection:
        """A second connection to the same broker, as the same user and in the protocol
        this publisher speaks now, for a subscription (the delivery probe's): a client id
        of its own, so it never takes over the publishing session."""
        return self._new_connection(subscriber_client_id(self._config.client_id), on_message)

    def _new_connection(
        self, client_id: str | None = None, on_message: OnMessage | None = None
    ) -> MqttConnection:
        config = self._config
        return MqttConnection(
            config.host,
            config.port,
            client_id=client_id or config.client_id,
            on_message=on_message,
            protocol=self._version,
            username=config.username,
            password=config.password,
            tls=self._tls,
            keepalive=config.keepalive,
            ack_timeout=config.ack_timeout,
            inflight=config.inflight,
            connect_timeout=CONNECT_TIMEOUT,
            close_timeout=DISCONNECT_TIMEOUT,
        )

    async def _serve(self, connection: MqttConnection, stop: asyncio.Event) -> MqttError | None:
        """Publish on `connection` until it ends or `stop`; why it ended (None: stop)."""
        self._confirm_fallback()
        self._connection = connection
        self._connected.set()
        self._metrics.broker_up.set(1)
        limits = connection.limits
        log.info(
            "broker_connected", broker=self._config.broker, client_id=self._config.client_id,
            protocol=_PROTOCOL_NAMES[self._version], window=limits.receive_maximum,
            **({"server_reference": limits.server_reference} if limits.server_reference else {}),
        )  # fmt: skip
        stopping = asyncio.create_task(stop.wait(), name="publisher-stop-watch")
        try:
            ends: list[asyncio.Future[Any]] = [connection.closed, stopping]
            await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self._connected.clear()
            self._metrics.broker_up.set(0)
        return connection.closed.result() if connection.closed.done() else None


def _kept_back(job: Job, prefixes: tuple[str, ...], now: float) -> Outcome | None:
    """Why `job` is not sent at all, or None."""
    if prefixes and not job.topic.startswith(prefixes):
        return _NOT_ALLOWED
    if job.expires is not None and job.expires <= now:
        return _EXPIRED
    return None


def _message_v5(job: Job, now: float) -> Message:
    """The MQTT 5 message of a job with a binary payload, properties or an expiry."""
    user_properties = [(JOB_ID_PROPERTY, str(job.id))]
    if job.user_properties:
        user_properties.extend(job.user_properties.items())
    expiry = None
    if job.expires is not None:
        # Whole seconds left, rounded up (the job is not sent at all with none left).
        expiry = min(math.ceil(job.expires - now), MAX_EXPIRY_INTERVAL)
    binary = job.payload_bytes is not None
    properties = PublishProperties(
        content_type=job.content_type,
        response_topic=job.response_topic,
        correlation_data=job.correlation_data,
        payload_format_utf8=not binary,
        message_expiry_interval=expiry,
    )
    payload = job.payload_bytes if job.payload_bytes is not None else job.payload.encode()
    return Message(job.topic, payload, job.qos, job.retain, user_properties, properties)


def _outcome(result: Result) -> Outcome:
    """What the connection's result for one message means for its row."""
    if result is ACCEPTED:
        return PUBLISHED
    if isinstance(result, Answer):
        code = result.reason_code
        if code < 0x80:
            return PUBLISHED
        delivery = Delivery.REJECTED if code in _PERMANENT_REFUSALS else Delivery.FAILED
        detail = f": {result.reason_string}" if result.reason_string else ""
        error = (
            f"broker refused the message: {REASON_NAMES.get(code, 'error')} (0x{code:02x}){detail}"
        )
        return Outcome(delivery, f"broker_0x{code:02x}", error)
    if isinstance(result, Unsendable):
        reason = _UNSENDABLE_REASONS.get(result.code, "unsendable")
        return Outcome(Delivery.REJECTED, reason, str(result))
    if isinstance(result, ConnectionLost):
        return _charge_after_loss(result)
    return Outcome(Delivery.NOT_SENT, "connection_lost", str(result))


def _charge_after_loss(lost: ConnectionLost) -> Outcome:
    """The connection ended before this message's answer: nothing says it arrived.

    The oldest message still waiting for PUBACK/PUBREC is the likeliest reason the
    broker hung up (Mosquitto closes the connection on an oversized or malformed
    PUBLISH): it is charged a failed attempt, so a row that kills every connection goes
    dead after the configured attempts. Everything else is released untouched. When the
    broker's last word was a refusal (Mosquitto refuses a `$SYS` publish, then hangs
    up), that refusal explains the loss and nobody else is charged. Nor is anybody when
    the broker broke the protocol, or said in its DISCONNECT that the cause was not a
    packet of ours (server shutting down, busy, quota exceeded, ...).
    """
    blame_possible = not lost.protocol_error and (
        lost.disconnect_reason is None or lost.disconnect_reason in _PACKET_DISCONNECT_REASONS
    )
    if blame_possible and lost.oldest_unanswered and not lost.after_refusal:
        return Outcome(
            Delivery.FAILED,
            "connection_lost",
            f"{lost.reason} (while this message was the oldest awaiting an ack)",
        )
    return Outcome(Delivery.NOT_SENT, "connection_lost", lost.reason)


def _tls_context(config: PublisherConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if config.cert_file and config.key_file:
        context.load_cert_chain(str(config.cert_file), str(config.key_file))
    return context
