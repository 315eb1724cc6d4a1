"""Every wait of the cycle is bounded: a stop while every slot is busy, a claim loop that
stops turning (/healthz), a batch that outlived its hold (a replica frozen and thawed)."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from jobpub import app
from jobpub.health import STALLED_AFTER, Heartbeat, stalled_after
from jobpub.metrics import Metrics
from jobpub.models import PUBLISHED
from jobpub.relay import HOLD_EXPIRED, Relay
from testbed.daemon import make_settings
from testbed.waiting import eventually
from tests.unit.test_relay import (
    FakeBatch,
    FakeCompleter,
    FakePublisher,
    FakeSource,
    config,
    job,
    let_ready_tasks_run,
    relay_of,
    run_until,
)


async def test_stop_is_honoured_while_every_slot_waits_for_acks_and_nothing_more_is_claimed() -> (
    None
):
    # A full batch sends the loop straight on to the next claim, and with one slot it
    # waits there: the broker never acks, so the slot never comes back by itself.
    stuck = FakeBatch([job(i, -1) for i in range(10)])
    source = FakeSource(stuck, FakeBatch([job(99, -1)]))
    publisher = FakePublisher(hold=asyncio.Event())  # never set: no ack ever comes
    relay = relay_of(source, publisher, Metrics(), config(concurrency=1, shutdown_timeout=0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop), name="relay-under-test")
    await eventually(lambda: len(publisher.sent) == 10, 2, "the batch out on the broker")
    await let_ready_tasks_run()  # the loop is now waiting for the slot
    assert source.claims == 1
    stop.set()
    await asyncio.wait_for(task, 2)  # the drain's 0.2 s, not an ack that never comes
    assert source.claims == 1, "no batch is claimed after stop"
    assert stuck.released
    assert stuck.settled is None


class NeverReturningSource(FakeSource):
    """A claim that hangs (a statement that never ends, a pool that never answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.hanging = asyncio.Event()

    async def claim(self, limit: int | None = None) -> FakeBatch:
        self.claims += 1
        self.hanging.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_healthz_turns_unhealthy_when_the_claim_loop_stops_turning() -> None:
    source = NeverReturningSource()
    heartbeat = Heartbeat()
    relay = Relay(source, FakeCompleter(), FakePublisher(), Metrics(), config(),
                  heartbeat=heartbeat)  # fmt: skip
    healthz = app.healthz_route(heartbeat, 0.2)
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop), name="relay-under-test")
    try:
        await eventually(source.hanging.is_set, 2, "the claim to hang")
        hung_at = time.monotonic()
        assert healthz().status == 200, "healthy while the loop has turned lately"
        await eventually(lambda: healthz().status == 503, 2, "/healthz to turn unhealthy")
        assert time.monotonic() - hung_at >= 0.2 - 0.05  # not before the bound
        assert healthz().body == b"relay loop stalled\n"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_healthz_stays_healthy_while_the_claim_loop_turns() -> None:
    source = FakeSource()  # every claim finds nothing: the loop polls
    heartbeat = Heartbeat()
    relay = Relay(source, FakeCompleter(), FakePublisher(), Metrics(),
                  config(poll_interval=0.02), heartbeat=heartbeat)  # fmt: skip
    healthz = app.healthz_route(heartbeat, 0.2)
    started = time.monotonic()
    statuses: list[int] = []

    def turned_for_a_while() -> bool:
        statuses.append(healthz().status)
        return time.monotonic() - started > 0.5

    await run_until(relay, turned_for_a_while, "half a second of polling")
    assert set(statuses) == {200}
    assert source.claims >= 5


def test_the_stall_bound_covers_the_longest_slot_wait() -> None:
    assert stalled_after(poll_interval=5, hold_timeout=45) == STALLED_AFTER
    assert stalled_after(poll_interval=30, hold_timeout=45) == 90
    assert stalled_after(poll_interval=5, hold_timeout=130) == 130  # a raised ack timeout


async def test_a_batch_thawed_after_its_hold_is_given_back_unsent() -> None:
    # A replica frozen (SIGSTOP) past the hold timeout: the database ended the claim's
    # transaction, another replica may have the rows now. Sending them adds copies.
    batch = FakeBatch([job(1, -1), job(2, 0)])
    batch.claimed_at = time.monotonic() - 10  # claimed, then frozen for 10 s
    publisher = FakePublisher()
    metrics = Metrics()
    relay = relay_of(FakeSource(batch), publisher, metrics, config(hold_timeout=5))
    with capture_logs() as logs:
        await run_until(relay, lambda: batch.released, "the batch given back")
    assert publisher.sent == []
    assert batch.settled is None
    assert any(e["event"] == "batch_hold_expired" and e["count"] == 2 for e in logs)
    assert metrics.registry.get_sample_value("jobpub_jobs_released_total") == 2


async def test_jobs_sent_before_the_hold_ran_out_are_settled_and_the_rest_given_back() -> None:
    batch = FakeBatch([job(1, -1), job(2, 0.3)])
    publisher = FakePublisher()
    relay = relay_of(FakeSource(batch), publisher, Metrics(),
                     config(hold_timeout=0.1, lookahead=0.5))  # fmt: skip
    await run_until(relay, lambda: batch.settled is not None, "the batch settled")
    assert [sent.id for _, sent in publisher.sent] == [1]
    assert batch.settled == [PUBLISHED, HOLD_EXPIRED]


async def test_a_batch_within_its_hold_is_published_whole() -> None:
    batch = FakeBatch([job(1, -1), job(2, 0.1)])
    publisher = FakePublisher()
    relay = relay_of(FakeSource(batch), publisher, Metrics(), config(hold_timeout=5))
    await run_until(relay, lambda: batch.settled is not None, "the batch settled")
    assert batch.settled == [PUBLISHED, PUBLISHED]


def test_the_hold_timeout_must_exceed_the_ack_deadline_and_the_lookahead() -> None:
    with pytest.raises(ValidationError) as refused:
        make_settings("postgresql://u@db/jobs", "mqtt://broker", hold_timeout=30)
    assert "JOBPUB_HOLD_TIMEOUT (30 s) must exceed JOBPUB_MQTT_ACK_TIMEOUT + JOBPUB_LOOKAHEAD" \
        in str(refused.value)  # fmt: skip
    with pytest.raises(ValidationError):
        make_settings("postgresql://u@db/jobs", "mqtt://broker", mqtt_ack_timeout=5,
                      lookahead=10, hold_timeout=15)  # fmt: skip
    settings = make_settings("postgresql://u@db/jobs", "mqtt://broker")
    assert settings.hold_timeout == 45
    # The default fits the default ack deadline with the longest lookahead allowed.
    assert make_settings("postgresql://u@db/jobs", "mqtt://broker", lookahead=10).hold_timeout


def test_the_hold_timeout_reaches_the_pool_and_the_relay() -> None:
    settings = make_settings("postgresql://u@db/jobs", "mqtt://broker", hold_timeout=50)
    assert app._database_config(settings).hold_timeout == 50
    assert app._relay_config(settings).hold_timeout == 50
