"""The broker side: keep one MQTT connection up and publish batches on it."""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Sequence

import structlog

from jobpub.backoff import RECONNECT_MAX_S, Backoff
from jobpub.metrics import Metrics
from jobpub.models import Delivery, Job, Outcome
from jobpub.mqtt import PROTOCOL_V5, PROTOCOL_V311, ConnectRefused, MqttConnection, encode_connect
from jobpub.settings import MqttEndpoint, Settings
from jobpub.waiting import wait_for_event

log = structlog.get_logger("jobpub.publisher")

CONNECT_TIMEOUT = 10.0
DISCONNECT_TIMEOUT = 2.0
_NOT_CONNECTED = Outcome(Delivery.NOT_SENT, "broker_down", "not connected")
_NOT_ALLOWED = Outcome(
    Delivery.REJECTED, "topic_not_allowed", "topic is outside JOBPUB_TOPIC_PREFIXES"
)


class MqttPublisher:
    """Owns the broker connection: connects, keeps it alive, reconnects with capped backoff."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._endpoint: MqttEndpoint = settings.mqtt
        self._version = PROTOCOL_V5 if settings.mqtt_protocol == "5" else PROTOCOL_V311
        self._client_id = f"{settings.mqtt_client_id_prefix}-{os.urandom(6).hex()}"
        self._keepalive = settings.mqtt_keepalive
        self._inflight = settings.mqtt_inflight
        self._ack_timeout = settings.mqtt_ack_timeout
        self._tls = _tls_context(settings) if self._endpoint.tls else None
        self._topic_prefixes = settings.allowed_topic_prefixes
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
        if not self._topic_prefixes:
            return self._send(jobs)
        allowed = [job for job in jobs if job.topic.startswith(self._topic_prefixes)]
        if len(allowed) == len(jobs):
            return self._send(jobs)
        merged: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()

        def merge(sent: asyncio.Future[list[Outcome]]) -> None:
            outcomes = iter(sent.result())
            merged.set_result(
                [
                    next(outcomes) if job.topic.startswith(self._topic_prefixes) else _NOT_ALLOWED
                    for job in jobs
                ]
            )

        self._send(allowed).add_done_callback(merge)
        return merged

    def _send(self, jobs: Sequence[Job]) -> asyncio.Future[list[Outcome]]:
        connection = self._connection
        if connection is None:
            future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
            future.set_result([_NOT_CONNECTED] * len(jobs))
            return future
        return connection.publish(jobs)

    async def run(self, stop: asyncio.Event) -> None:
        """Connect and stay connected until `stop`; then disconnect."""
        backoff = Backoff(initial=0.2, maximum=RECONNECT_MAX_S)
        last_error = ""
        while not stop.is_set():
            try:
                connection = await self._connect()
            except (OSError, ConnectionError, ConnectRefused, TimeoutError) as exc:
                delay = backoff.next()
                error = str(exc) or type(exc).__name__
                # One line per distinct failure, not one per retry: a wrong password
                # would otherwise fill the log every few seconds.
                report = log.warning if error != last_error else log.debug
                report(
                    "broker_connect_failed", broker=str(self._endpoint), error=error,
                    retry_in_s=round(delay, 2),
                )  # fmt: skip
                last_error = error
                await wait_for_event(stop, delay)
                continue
            last_error = ""
            backoff.reset()
            self._connection = connection
            self._connected.set()
            self._metrics.broker_up.set(1)
            log.info(
                "broker_connected", broker=str(self._endpoint), client_id=self._client_id,
                protocol=self._version, window=connection.limits.receive_maximum,
            )  # fmt: skip
            reason = await self._supervise(connection, stop)
            self._connected.clear()
            self._metrics.broker_up.set(0)
            if stop.is_set():
                connection.disconnect()
                try:
                    # A peer that stops reading would hold a graceful close (and the exit)
                    # forever: give it a moment, then cut.
                    async with asyncio.timeout(DISCONNECT_TIMEOUT):
                        await connection.closed
                except TimeoutError:
                    connection.abort("disconnect timed out")
                log.info("broker_disconnected", broker=str(self._endpoint))
                return
            self._metrics.broker_disconnects.inc()
            log.warning("broker_connection_lost", broker=str(self._endpoint), reason=reason)

    async def _connect(self) -> MqttConnection:
        loop = asyncio.get_running_loop()
        endpoint = self._endpoint
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, connection = await loop.create_connection(
                lambda: MqttConnection(self._version, self._inflight),
                endpoint.host,
                endpoint.port,
                ssl=self._tls,
            )
            password = endpoint.password.get_secret_value() if endpoint.password else None
            connection.send(
                encode_connect(
                    self._version, self._client_id, self._keepalive, endpoint.username, password
                )
            )
            try:
                await connection.connack
            except BaseException:
                connection.abort("connect failed")
                raise
        return connection

    async def _supervise(self, connection: MqttConnection, stop: asyncio.Event) -> str:
        """Ping while idle; drop a connection whose broker stopped answering."""
        keepalive = connection.limits.server_keepalive or self._keepalive
        tick = min(0.25, keepalive / 4)
        last_ping = time.monotonic()
        while True:
            # Waiting on the future creates no task; the tick bounds how late `stop` is seen.
            await asyncio.wait([connection.closed], timeout=tick)
            if connection.closed.done():
                return connection.closed.result()
            if stop.is_set():
                return "stopping"
            now = time.monotonic()
            silent_for = now - connection.last_received
            if connection.outstanding() and silent_for > self._ack_timeout:
                connection.abort(f"no answer from the broker for {silent_for:.0f}s")
                continue
            if silent_for > keepalive * 1.5:
                connection.abort(f"no answer to keepalive for {silent_for:.0f}s")
                continue
            if now - last_ping >= keepalive / 2:
                connection.ping()
                last_ping = now


def _tls_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None
    )
    if settings.mqtt_cert_file and settings.mqtt_key_file:
        context.load_cert_chain(str(settings.mqtt_cert_file), str(settings.mqtt_key_file))
    return context
