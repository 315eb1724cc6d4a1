"""The end-to-end delivery probe: a job published through the normal path, received back.

Every replica schedules the next probe slot's job (the database keeps one row a slot).
One replica at a time, elected by a PostgreSQL session lock, subscribes to the probe
topic and records each arrival; a probe the broker acknowledged that never arrives is
counted missing. A failure here logs and retries with backoff: publishing never waits
on the probe, and the replica's readiness does not depend on it.
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
from jobpub.mqtt import ConnectionLost, InboundMessage, MqttConnection, MqttError, OnMessage
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
    async def record_receipt(self, key: str) -> float | None: ...
    async def mark_missing(self, timeout: float) -> int: ...
    async def resign(self) -> None: ...


SubscriberConnection = Callable[[OnMessage], MqttConnection]


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

    async def run(self, stop: asyncio.Event) -> None:
        """Schedule probes and, while elected, receive them; until `stop`."""
        log.info("probe_started", topic=self._config.topic, interval_s=self._config.interval)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._schedule(stop), name="probe-scheduler")
            tasks.create_task(self._subscribe(stop), name="probe-subscriber")

    async def _schedule(self, stop: asyncio.Event) -> None:
        """Every half interval: the next slot's probe exists at least half an interval
        before it is due, whichever replica made it."""
        config = self._config
        while not stop.is_set():
            try:
                await self._scheduling.schedule_probe(config.topic, config.interval)
            except DatabaseError as exc:  # the claim loop reports the database's state
                log.debug("probe_schedule_failed", error=str(exc))
            except Exception as exc:  # a probe bug must never stop publishing
                log.exception("probe_schedule_crashed", error=str(exc))
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
        arrived: collections.deque[str] = collections.deque()
        wake = asyncio.Event()

        def on_message(message: InboundMessage) -> None:
            if message.topic != config.topic or not message.payload.startswith(PROBE_PREFIX):
                return
            if len(arrived) < MAX_PENDING:
                arrived.append(message.payload.decode("ascii", errors="replace"))
                wake.set()

        async with self._connect(on_message) as connection:
            connection.closed.add_done_callback(lambda _: wake.set())
            granted = await connection.subscribe(config.topic, qos=1)
            self._metrics.probe_subscriber.set(1)
            log.info("probe_subscribed", topic=config.topic, granted_qos=granted)
            next_sweep = time.monotonic() + config.sweep_every
            while not stop.is_set():
                wake.clear()
                while arrived:
                    await self._record(arrived.popleft())
                if not connection.is_open:
                    reason = connection.closed.result() if connection.closed.done() else None
                    raise reason or ConnectionLost("probe subscription closed")
                if time.monotonic() >= next_sweep:
                    await self._sweep()
                    next_sweep = time.monotonic() + config.sweep_every
                if not arrived:
                    await wait_for_any((wake, stop), max(0.0, next_sweep - time.monotonic()))

    async def _record(self, key: str) -> None:
        latency = await self._seat.record_receipt(key)
        if latency is not None:
            self._metrics.probe_latency.observe(max(0.0, latency))
            log.debug("probe_received", key=key, latency_s=round(latency, 4))

    async def _sweep(self) -> None:
        missing = await self._seat.mark_missing(self._config.timeout)
        if missing:
            self._metrics.probes_missing.inc(missing)
            log.warning(
                "probes_missing", count=missing, topic=self._config.topic,
                timeout_s=self._config.timeout,
            )  # fmt: skip
