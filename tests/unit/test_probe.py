"""The delivery probe's loops on fakes of its own Protocols: failures never escape, an
arrival is kept until it is recorded, and a failure that stops the probe is said."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import TracebackType
from typing import cast

from structlog.testing import capture_logs

from jobpub.errors import DatabaseError
from jobpub.metrics import Metrics
from jobpub.mqtt import InboundMessage, MqttConnection, MqttError, OnMessage, SubscribeRefused
from jobpub.probe import DeliveryProbe, ProbeConfig
from jobpub.publisher import MAX_PORTABLE_CLIENT_ID, subscriber_client_id
from testbed.waiting import eventually

CONFIG = ProbeConfig(topic="p", interval=0.5, timeout=1)
SUBSCRIBED_AT = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


class FlakyScheduling:
    def __init__(self) -> None:
        self.calls = 0

    async def schedule_probe(self, topic: str, interval: float) -> datetime:
        self.calls += 1
        if self.calls % 2:
            raise DatabaseError("scheduling a delivery probe: connection refused")
        return datetime.now(UTC)


class ScriptedScheduling:
    """Fails with each error of `errors` in turn, then succeeds."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        self.calls = 0

    async def schedule_probe(self, topic: str, interval: float) -> datetime:
        self.calls += 1
        if self.calls <= len(self.errors):
            raise DatabaseError(self.errors[self.calls - 1])
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

    async def database_now(self) -> datetime:
        raise AssertionError("never elected")

    async def record_receipt(self, key: str, waited: float) -> float | None:
        raise AssertionError("never elected")

    async def mark_missing(self, timeout: float, since: datetime) -> int:
        raise AssertionError("never elected")

    async def resign(self) -> None:
        self.resignations += 1


class RecordingSeat:
    """Always elected; the first recording fails (the database went away)."""

    def __init__(self) -> None:
        self.recorded: list[tuple[str, float]] = []
        self.failed_records = 0
        self.sweeps_since: list[datetime] = []

    async def try_lead(self) -> bool:
        return True

    async def database_now(self) -> datetime:
        return SUBSCRIBED_AT

    async def record_receipt(self, key: str, waited: float) -> float | None:
        if not self.failed_records:
            self.failed_records += 1
            raise DatabaseError("recording a delivery probe: server closed the connection")
        self.recorded.append((key, waited))
        return 0.01

    async def mark_missing(self, timeout: float, since: datetime) -> int:
        self.sweeps_since.append(since)
        return 0

    async def resign(self) -> None:
        return None


class FakeSubscription:
    """The part of MqttConnection the probe uses; `deliver` arrive on SUBSCRIBE."""

    def __init__(
        self, on_message: OnMessage, deliver: list[bytes], refuse: SubscribeRefused | None
    ) -> None:
        self._on_message, self._deliver, self._refuse = on_message, deliver, refuse
        self.closed: asyncio.Future[MqttError] = asyncio.get_running_loop().create_future()
        self.is_open = True

    async def __aenter__(self) -> FakeSubscription:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.is_open = False

    async def subscribe(self, topic_filter: str, qos: int = 1) -> int:
        if self._refuse is not None:
            raise self._refuse
        for payload in self._deliver:
            self._on_message(InboundMessage(topic_filter, payload, 1, False, False))
        return qos


class FakeBroker:
    """Hands out subscriptions; the first delivers `first_delivery`, later ones nothing."""

    def __init__(self, first_delivery: list[bytes], refuse: SubscribeRefused | None = None):
        self.pending = first_delivery
        self.refuse = refuse
        self.connections = 0

    def connect(self, on_message: OnMessage) -> MqttConnection:
        self.connections += 1
        deliver, self.pending = self.pending, []
        return cast(MqttConnection, FakeSubscription(on_message, deliver, self.refuse))


def never_connects(on_message: OnMessage) -> MqttConnection:
    raise AssertionError("never elected")


async def test_failures_are_retried_and_the_probe_stops_on_request() -> None:
    scheduling, seat, metrics = FlakyScheduling(), BrokenSeat(), Metrics()
    probe = DeliveryProbe(CONFIG, scheduling, seat, never_connects, metrics)
    stop = asyncio.Event()
    task = asyncio.create_task(probe.run(stop), name="probe-under-test")
    await eventually(lambda: seat.elections >= 2 and scheduling.calls >= 3, 10, "retries")
    assert not task.done(), "a failure ended the probe task (and with it the replica)"
    stop.set()
    await asyncio.wait_for(task, 5)
    assert seat.resignations == seat.elections
    assert metrics.registry.get_sample_value("jobpub_probe_subscriber") == 0
    # On for the alerts, though it never received a probe.
    assert metrics.registry.get_sample_value("jobpub_probe_interval_seconds") == 0.5


async def test_an_arrival_whose_recording_failed_is_recorded_on_the_next_election() -> None:
    seat, broker = RecordingSeat(), FakeBroker([b"jobpub-probe:1000"])
    probe = DeliveryProbe(CONFIG, FlakyScheduling(), seat, broker.connect, Metrics())
    stop = asyncio.Event()
    task = asyncio.create_task(probe.run(stop), name="probe-under-test")
    await eventually(lambda: bool(seat.recorded), 10, "the arrival recorded")
    stop.set()
    await asyncio.wait_for(task, 5)
    assert seat.failed_records == 1
    assert broker.connections >= 2, "recorded on a later subscription, not the first"
    [(key, waited)] = seat.recorded
    assert key == "jobpub-probe:1000"
    assert waited > 0  # its latency counts from when it arrived, not when recorded
    assert set(seat.sweeps_since) <= {SUBSCRIBED_AT}


async def test_a_scheduling_failure_warns_once_per_distinct_error() -> None:
    errors = ["database away", "database away", "database away", "topic not allowed",
              "topic not allowed"]  # fmt: skip
    scheduling = ScriptedScheduling(errors)
    probe = DeliveryProbe(CONFIG, scheduling, BrokenSeat(), never_connects, Metrics())
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(probe.run(stop), name="probe-under-test")
        await eventually(lambda: scheduling.calls > len(errors), 15, "a success")
        stop.set()
        await asyncio.wait_for(task, 5)
    failures = [(e["log_level"], e["error"]) for e in logs if e["event"] == "probe_schedule_failed"]
    assert failures == [
        ("warning", "database away"),
        ("debug", "database away"),
        ("debug", "database away"),
        ("warning", "topic not allowed"),
        ("debug", "topic not allowed"),
    ]
    assert any(e["event"] == "probe_schedule_recovered" for e in logs)


async def test_a_refused_subscribe_is_a_warning_and_leaves_the_subscriber_gauge_at_0() -> None:
    refused = SubscribeRefused(0x87, "broker refused the subscription: not authorized")
    broker, metrics = FakeBroker([], refuse=refused), Metrics()
    probe = DeliveryProbe(CONFIG, FlakyScheduling(), RecordingSeat(), broker.connect, metrics)
    stop = asyncio.Event()
    with capture_logs() as logs:
        task = asyncio.create_task(probe.run(stop), name="probe-under-test")
        await eventually(lambda: broker.connections >= 2, 10, "a second attempt")
        assert metrics.registry.get_sample_value("jobpub_probe_subscriber") == 0
        stop.set()
        await asyncio.wait_for(task, 5)
    refusals = [e for e in logs if e["event"] == "probe_subscribe_refused"]
    assert refusals
    assert {e["log_level"] for e in refusals} == {"warning"}


def test_the_subscriber_client_id_fits_the_mqtt_311_limit() -> None:
    assert subscriber_client_id("jobpub-0123456789ab") == "jobpub-0123456789ab-sub"
    longest_prefix = "p" * 16  # JOBPUB_MQTT_CLIENT_ID_PREFIX's longest
    long_id = subscriber_client_id(f"{longest_prefix}-0123456789ab")
    assert len(long_id.encode()) == MAX_PORTABLE_CLIENT_ID == 23
    assert long_id.startswith(longest_prefix)
    assert long_id.endswith("-sub")
    # A multi-byte character is not cut in half.
    assert len(subscriber_client_id("é" * 16).encode()) <= MAX_PORTABLE_CLIENT_ID
