"""The end-to-end delivery probe: a job published through the normal path, received back.

Every replica schedules the next probe slot's job (the database keeps one row a slot).
One replica at a time, elected by a PostgreSQL session lock, subscribes to the probe
topic and records each arrival; a probe the broker acknowledged while it was subscribed
that never arrives is counted missing. A failure here logs and retries with backoff:
publishing never waits on the probe, and the replica's readiness does not depend on it.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Protocol

import structlog

from jobpub.backoff import Backoff
from jobpub.errors import DatabaseError
from jobpub.metrics import Metrics
from jobpub.mqtt import (
    ConnectionLost,
    InboundMessage,
    MqttConnection,
    MqttError,
    OnMessage,
    SubscribeRefused,
)
from jobpub.waiting import wait_for_any, wait_for_event

log = structlog.get_logger("jobpub.probe")

PROBE_PREFIX: Final = b"jobpub-probe:"  # the payload of every probe job (sql/0015)
# Arrivals waiting to be recorded: far more than one interval's worth. A flood on the
# probe topic (someone else publishing there) is dropped past this, not buffered.
MAX_PENDING: Final = 1000
RETRY_MAX_S: Final = 30.0


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    topic: str  # JOBPUB_PROBE_TOPIC
    interval: float  # seconds between probes (JOBPUB_PROBE_INTERVAL)
    timeout: float  # published but not received this long after: missing (JOBPUB_PROBE_TIMEOUT)

    @property
    def sweep_every(self) -> float:
        """How often the subscriber looks for missing probes."""
        return max(0.5, min(self.interval, self.timeout / 2))


class ProbeScheduling(Protocol):
    async def schedule_probe(self, topic: str, interval: float) -> datetime: ...


class ElectedSeat(Protocol):
    """The election and the elected subscriber's records (jobpub.db.probes)."""

    async def try_lead(self) -> bool: ...
    async def database_now(self) -> datetime: ...
    async def record_receipt(self, key: str, waited: float) -> float | None: ...
    async def mark_missing(self, timeout: float, since: datetime) -> int: ...
    async def resign(self) -> None: ...


SubscriberConnection = Callable[[OnMessage], MqttConnection]


@dataclass(frozen=True, slots=True)
class Arrival:
    key: str
    at: float  # time.monotonic() when it arrived: recorded late, it keeps its latency


class DeliveryProbe:
    def __init__(
        self,
        config: ProbeConfig,
        scheduling: ProbeScheduling,
        seat: ElectedSeat,
        connect: SubscriberConnection,
        metrics: Metrics,
    ) -> None:
        self._config = config
        self._scheduling = scheduling
        self._seat = seat
        self._connect = connect
        self._metrics = metrics
        # Arrivals not yet recorded. Kept across elections: one whose recording failed
        # (the database went away) is recorded once this replica is elected again.
        self._arrived: collections.deque[Arrival] = collections.deque()

    async def run(self, stop: asyncio.Event) -> None:
        """Schedule probes and, while elected, receive them; until `stop`."""
        log.info("probe_started", topic=self._config.topic, interval_s=self._config.interval)
        # For the alerts: the probe is on here, and (until a probe arrives) nothing has
        # been missed for longer than this replica has run.
        self._metrics.probe_interval.set(self._config.interval)
        self._metrics.probe_last_received.set(time.time())
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._schedule(stop), name="probe-scheduler")
            tasks.create_task(self._subscribe(stop), name="probe-subscriber")

    async def _schedule(self, stop: asyncio.Event) -> None:
        """Every half interval: the next slot's probe exists at least half an interval
        before it is due, whichever replica made it."""
        config = self._config
        last_error: str | None = None
        while not stop.is_set():
            try:
                await self._scheduling.schedule_probe(config.topic, config.interval)
            except DatabaseError as exc:
                # A refusal (the topic not allowed) stops the probe for good: said once at
                # warning; while the same error repeats (the database away a while), debug.
                report = log.debug if str(exc) == last_error else log.warning
                report("probe_schedule_failed", error=str(exc))
                last_error = str(exc)
            except Exception as exc:  # a probe bug must never stop publishing
                log.exception("probe_schedule_crashed", error=str(exc))
            else:
                if last_error is not None:
                    log.info("probe_schedule_recovered")
                last_error = None
            await wait_for_event(stop, config.interval / 2)

    async def _subscribe(self, stop: asyncio.Event) -> None:
        """Try for the election; once elected, subscribe and record until a failure or
        `stop`, then give the election up so another replica can take it."""
        backoff = Backoff(min(1.0, self._config.interval), RETRY_MAX_S)
        retry = max(1.0, min(self._config.interval, 5.0))  # how often a follower asks
        while not stop.is_set():
            delay = retry
            try:
                if await self._seat.try_lead():
                    log.info("probe_subscriber_elected", topic=self._config.topic)
                    await self._receive(stop)
                    backoff.reset()
            except SubscribeRefused as exc:
                delay = backoff.next()
                log.warning(
                    "probe_subscribe_refused", topic=self._config.topic, error=str(exc),
                    retry_in_s=round(delay, 1),
                    consequence="no probe is received or counted missing until it is allowed",
                )  # fmt: skip
            except (DatabaseError, MqttError, OSError) as exc:
                delay = backoff.next()
                log.warning("probe_subscriber_failed", error=str(exc), retry_in_s=round(delay, 1))
            except Exception as exc:  # a probe bug must never stop publishing
                delay = backoff.next()
                log.exception("probe_subscriber_crashed", error=str(exc))
            finally:
                self._metrics.probe_subscriber.set(0)
                await self._seat.resign()
            await wait_for_event(stop, delay)

    async def _receive(self, stop: asyncio.Event) -> None:
        config = self._config
        arrived = self._arrived
        wake = asyncio.Event()

        def on_message(message: InboundMessage) -> None:
            if message.topic != config.topic or not message.payload.startswith(PROBE_PREFIX):
                return
            if len(arrived) < MAX_PENDING:
                key = message.payload.decode("ascii", errors="replace")
                arrived.append(Arrival(key, time.monotonic()))
                wake.set()

        async with self._connect(on_message) as connection:
            connection.closed.add_done_callback(lambda _: wake.set())
            granted = await connection.subscribe(config.topic, qos=1)
            # Only what is published from now on can reach this subscription.
            since = await self._seat.database_now()
            self._metrics.probe_subscriber.set(1)
            log.info("probe_subscribed", topic=config.topic, granted_qos=granted)
            next_sweep = time.monotonic() + config.sweep_every
            while not stop.is_set():
                wake.clear()
                while arrived:
                    await self._record(arrived[0])
                    arrived.popleft()  # only once recorded: a failure keeps it queued
                if not connection.is_open:
                    reason = connection.closed.result() if connection.closed.done() else None
                    raise reason or ConnectionLost("probe subscription closed")
                if time.monotonic() >= next_sweep:
                    await self._sweep(since)
                    next_sweep = time.monotonic() + config.sweep_every
                if not arrived:
                    await wait_for_any((wake, stop), max(0.0, next_sweep - time.monotonic()))

    async def _record(self, arrival: Arrival) -> None:
        waited = max(0.0, time.monotonic() - arrival.at)
        latency = await self._seat.record_receipt(arrival.key, waited)
        if latency is not None:
            self._metrics.probe_latency.observe(max(0.0, latency))
            self._metrics.probe_last_received.set(time.time() - waited)
            log.debug("probe_received", key=arrival.key, latency_s=round(latency, 4))

    async def _sweep(self, since: datetime) -> None:
        missing = await self._seat.mark_missing(self._config.timeout, since)
        if missing:
            self._metrics.probes_missing.inc(missing)
            log.warning(
                "probes_missing", count=missing, topic=self._config.topic,
                timeout_s=self._config.timeout,
            )  # fmt: skip
