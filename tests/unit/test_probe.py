"""The delivery probe's loops on fakes of its own Protocols: failures never escape."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from jobpub.errors import DatabaseError
from jobpub.metrics import Metrics
from jobpub.mqtt import MqttConnection, OnMessage
from jobpub.probe import DeliveryProbe, ProbeConfig
from testbed.waiting import eventually


class FlakyScheduling:
    def __init__(self) -> None:
        self.calls = 0

    async def schedule_probe(self, topic: str, interval: float) -> datetime:
        self.calls += 1
        if self.calls % 2:
            raise DatabaseError("scheduling a delivery probe: connection refused")
        return datetime.now(UTC)


class BrokenSeat:
    """Wins every election, then fails: a bug (ValueError) and a database error in turn."""

    def __init__(self) -> None:
        self.elections = 0
        self.resignations = 0

    async def try_lead(self) -> bool:
        self.elections += 1
        if self.elections % 2:
            raise ValueError("a bug in the probe")
        raise DatabaseError("electing the probe subscriber: connection refused")

    async def record_receipt(self, key: str) -> float | None:
        raise AssertionError("never elected")

    async def mark_missing(self, timeout: float) -> int:
        raise AssertionError("never elected")

    async def resign(self) -> None:
        self.resignations += 1


def never_connects(on_message: OnMessage) -> MqttConnection:
    raise AssertionError("never elected")


async def test_failures_are_retried_and_the_probe_stops_on_request() -> None:
    scheduling, seat, metrics = FlakyScheduling(), BrokenSeat(), Metrics()
    config = ProbeConfig(topic="p", interval=0.5, timeout=1)
    probe = DeliveryProbe(config, scheduling, seat, never_connects, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(probe.run(stop), name="probe-under-test")
    await eventually(lambda: seat.elections >= 2 and scheduling.calls >= 3, 10, "retries")
    assert not task.done(), "a failure ended the probe task (and with it the replica)"
    stop.set()
    await asyncio.wait_for(task, 5)
    assert seat.resignations == seat.elections
    assert metrics.registry.get_sample_value("jobpub_probe_subscriber") == 0
