"""The cycle with fakes of our own Protocols (JobSource, BatchCompleter, Publisher)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from structlog.testing import capture_logs

from jobpub.errors import DatabaseError, DatabaseUnavailable
from jobpub.metrics import Metrics
from jobpub.models import PUBLISHED, Delivery, Job, Outcome, Settled
from jobpub.relay import Relay, RelayConfig
from testbed.waiting import eventually


class FakeBatch:
    def __init__(
        self,
        jobs: list[Job],
        next_wake_in: float | None = None,
        *,
        commit_lost: bool = False,
        commit: asyncio.Event | None = None,
    ) -> None:
        self.jobs = jobs
        self.claimed_at = time.monotonic()
        self.next_wake_in = next_wake_in
        self.settled: list[Outcome] | None = None
        self.released = False
        self.committing = False
        self.commit_cut = False  # the settle was cancelled while it committed
        self._commit_lost = commit_lost
        self._commit = commit  # if given, the commit waits for it

    async def settle(self, outcomes: Sequence[Outcome]) -> Settled:
        self.committing = True
        if self._commit is not None:
            try:
                await self._commit.wait()
            except asyncio.CancelledError:
                self.commit_cut = True
                raise
        self.settled = list(outcomes)
        return Settled(len(outcomes), 0, 0, 0, commit_lost=self._commit_lost)

    async def release(self) -> None:
        self.released = True


class FakeCompleter:
    async def settle(self, batch: FakeBatch, outcomes: Sequence[Outcome]) -> Settled:
        return await batch.settle(outcomes)

    async def release(self, batch: FakeBatch) -> None:
        await batch.release()


class FakeSource:
    def __init__(self, *batches: FakeBatch | Exception, failed_checks: int = 0) -> None:
        self.queue = list(batches)
        self.claims = 0
        self.handed_out: list[FakeBatch] = []
        self.calls: list[tuple[str, float]] = []  # ("claim" | "check", monotonic time)
        self._failed_checks = failed_checks

    async def claim(self, limit: int | None = None) -> FakeBatch:
        self.claims += 1
        self.calls.append(("claim", time.monotonic()))
        item = self.queue.pop(0) if self.queue else FakeBatch([])
        if isinstance(item, Exception):
            raise item
        self.handed_out.append(item)
        return item

    async def check(self) -> None:
        self.calls.append(("check", time.monotonic()))
        if self._failed_checks:
            self._failed_checks -= 1
            raise DatabaseUnavailable("still down")


class FakePublisher:
    def __init__(self, *, connected: bool = True, hold: asyncio.Event | None = None) -> None:
        self.connected = connected
        self.sent: list[tuple[float, Job]] = []
        self.waits = 0  # calls of wait_connected: the claim loop's turns while disconnected
        self._hold = hold

    async def wait_connected(self, timeout: float) -> bool:
        self.waits += 1
        await asyncio.sleep(min(timeout, 0.01))
        return self.connected

    def publish(self, jobs: Sequence[Job]) -> asyncio.Future[list[Outcome]]:
        now = time.monotonic()
        self.sent.extend((now, job) for job in jobs)
        future: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        if self._hold is None:
            future.set_result([PUBLISHED] * len(jobs))
        else:
            hold = self._hold

            async def later() -> None:
                await hold.wait()
                future.set_result([PUBLISHED] * len(jobs))

            asyncio.get_running_loop().create_task(later(), name="fake-ack")
        return future


def config(**overrides: float) -> RelayConfig:
    values = {"batch_size": 10, "concurrency": 2, "poll_interval": 0.05, "lookahead": 0.25,
              "shutdown_timeout": 1.0, "rejoin_delay": 0.01}  # fmt: skip
    values.update(overrides)
    return RelayConfig(**values)  # type: ignore[arg-type]


def job(job_id: int, due_in: float) -> Job:
    return Job(job_id, f"t/{job_id}", "x", 1, False, due_in)


async def run_until(relay: Relay[Any], condition: Callable[[], bool], what: str) -> None:
    """Run the relay until `condition` holds (2 s at most), then stop it."""
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop), name="relay-under-test")
    try:
        await eventually(condition, 2, what)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def relay_of(
    source: FakeSource, publisher: FakePublisher, metrics: Metrics, relay_config: RelayConfig
) -> Relay[FakeBatch]:
    return Relay(source, FakeCompleter(), publisher, metrics, relay_config)


async def let_ready_tasks_run(turns: int = 50) -> None:
    """Give every task that can run its turns (a wake and the claim it causes take a
    few): not a wait for time to pass, so nothing here depends on the machine's speed."""
    for _ in range(turns):
        await asyncio.sleep(0)


async def test_each_job_goes_out_no_earlier_than_its_time() -> None:
    batch = FakeBatch([job(1, -5.0), job(2, 0.0), job(3, 0.05), job(4, 0.12)])
    publisher = FakePublisher()
    metrics = Metrics()
    relay = relay_of(FakeSource(batch), publisher, metrics, config())
    await run_until(relay, lambda: batch.settled is not None, "the batch settled")
    assert [j.id for _, j in publisher.sent] == [1, 2, 3, 4]
    for sent_at, sent in publisher.sent:
        assert sent_at >= batch.claimed_at + sent.due_in
    assert batch.settled == [PUBLISHED] * 4

    def lag_bucket(le: str) -> float | None:
        return metrics.registry.get_sample_value("jobpub_publish_lag_seconds_bucket", {"le": le})

    assert lag_bucket("2.5") == 3  # on time
    assert lag_bucket("10.0") == 4  # and the one 5 s overdue


async def test_nothing_is_claimed_while_the_broker_is_down() -> None:
    source = FakeSource(FakeBatch([job(1, -1)]))
    publisher = FakePublisher(connected=False)
    relay = relay_of(source, publisher, Metrics(), config())
    await run_until(relay, lambda: publisher.waits >= 10, "ten turns of the claim loop")
    assert source.claims == 0


async def test_database_errors_are_survived_and_reported() -> None:
    batch = FakeBatch([job(1, -1)])
    source = FakeSource(DatabaseUnavailable("down"), batch)
    metrics = Metrics()
    relay = relay_of(source, FakePublisher(), metrics, config())
    await run_until(relay, lambda: batch.settled is not None, "the batch after the error")
    assert batch.settled == [PUBLISHED]
    assert relay.health.ready


async def test_after_lost_connections_claims_wait_for_other_replicas_to_mark() -> None:
    batch = FakeBatch([job(1, -1)])
    source = FakeSource(DatabaseUnavailable("connection lost"), batch, failed_checks=1)
    relay = relay_of(source, FakePublisher(), Metrics(), config(rejoin_delay=0.2))
    await run_until(relay, lambda: batch.settled is not None, "the batch after the loss")
    names = [name for name, _ in source.calls]
    assert names[:4] == ["claim", "check", "check", "claim"], "no claim before the pause"
    answered_at, claimed_at = source.calls[2][1], source.calls[3][1]
    assert claimed_at - answered_at >= 0.2
    assert relay.health.ready


async def test_a_lost_commit_pauses_claims_the_same_way() -> None:
    lost = FakeBatch([job(1, -1)], commit_lost=True)
    later = FakeBatch([job(2, -1)])
    source = FakeSource(lost, later)
    relay = relay_of(source, FakePublisher(), Metrics(), config(rejoin_delay=0.2))
    await run_until(relay, lambda: later.settled is not None, "the batch after the pause")
    checked = next(at for name, at in source.calls if name == "check")
    claimed = next(at for name, at in source.calls if name == "claim" and at > checked)
    assert claimed - checked >= 0.2


async def test_a_commit_lost_while_the_loop_waits_for_a_slot_still_pauses_claims() -> None:
    # A full batch sends the loop straight on to the next claim; with one slot it waits
    # there while the batch is out. Its commit is lost then: the claim must still wait.
    acks = asyncio.Event()
    lost = FakeBatch([job(i, -1) for i in range(10)], commit_lost=True)
    later = FakeBatch([job(99, -1)])
    source = FakeSource(lost, later)
    publisher = FakePublisher(hold=acks)
    relay = relay_of(source, publisher, Metrics(), config(concurrency=1, rejoin_delay=0.2))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop), name="relay-under-test")
    try:
        # Sent by the batch's task, which ran once the loop blocked on the slot.
        await eventually(lambda: len(publisher.sent) == 10, 2, "the first batch sent")
        acks.set()
        await eventually(lambda: later.settled is not None, 2, "the batch after the pause")
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert [name for name, _ in source.calls][:3] == ["claim", "check", "claim"]
    checked, claimed = source.calls[1][1], source.calls[2][1]
    assert claimed - checked >= 0.2


async def test_a_refused_claim_is_retried_without_the_pause() -> None:
    batch = FakeBatch([job(1, -1)])
    source = FakeSource(DatabaseError("permission denied for table jobs"), batch)
    relay = relay_of(source, FakePublisher(), Metrics(), config(rejoin_delay=60))
    await run_until(relay, lambda: batch.settled is not None, "the batch after the refusal")
    assert [name for name, _ in source.calls][:2] == ["claim", "claim"]


async def test_a_full_batch_is_followed_by_another_claim_at_once() -> None:
    full = FakeBatch([job(i, -1) for i in range(10)])
    source = FakeSource(full, FakeBatch([job(99, -1)]))
    relay = relay_of(source, FakePublisher(), Metrics(), config(poll_interval=60))
    await run_until(relay, lambda: source.claims >= 2, "a second claim")
    assert source.claims >= 2, "the poll interval must not delay a backlog"


async def test_a_notification_wakes_the_idle_loop() -> None:
    source = FakeSource()
    relay = relay_of(source, FakePublisher(), Metrics(), config(poll_interval=60))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop), name="relay-under-test")
    await eventually(lambda: source.claims >= 1, 2, "the first claim")
    before = source.claims
    relay.notify(None)
    await eventually(lambda: source.claims > before, 2, "a claim after the notification")
    assert source.claims == before + 1
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_a_hint_far_beyond_the_planned_wake_is_ignored() -> None:
    source = FakeSource(FakeBatch([], next_wake_in=30.0))
    relay = relay_of(source, FakePublisher(), Metrics(), config(poll_interval=60))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop), name="relay-under-test")
    await eventually(lambda: source.claims >= 1, 2, "the first claim")
    relay.notify(time.time() + 3600)
    await let_ready_tasks_run()  # a claim it caused would happen now
    assert source.claims == 1
    relay.notify(time.time() + 1)  # earlier than planned: claim now
    await eventually(lambda: source.claims >= 2, 2, "a claim after the earlier hint")
    assert source.claims == 2
    stop.set()
    await asyncio.wait_for(task, 5)


async def test_stop_waits_for_in_flight_acks_then_settles() -> None:
    hold = asyncio.Event()
    batch = FakeBatch([job(1, -1)])
    publisher = FakePublisher(hold=hold)
    relay = relay_of(FakeSource(batch), publisher, Metrics(), config())
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop), name="relay-under-test")
    await eventually(lambda: bool(publisher.sent), 2, "the batch in flight")
    with capture_logs() as logs:
        stop.set()
        await eventually(lambda: any(e["event"] == "draining" for e in logs), 2, "the drain")
        await let_ready_tasks_run()  # were the drain not waiting, it would end now
    assert not task.done(), "the drain waits for the in-flight batch"
    hold.set()
    await asyncio.wait_for(task, 5)
    assert batch.settled == [PUBLISHED]


async def test_drain_timeout_releases_the_batch() -> None:
    batch = FakeBatch([job(1, -1)])
    publisher = FakePublisher(hold=asyncio.Event())
    relay = relay_of(FakeSource(batch), publisher, Metrics(), config(shutdown_timeout=0.1))
    await run_until(relay, lambda: bool(publisher.sent), "the batch in flight")
    assert batch.released
    assert batch.settled is None


async def test_drain_timeout_lets_a_settle_finish_its_commit() -> None:
    # Cut mid-commit, a settle would leave the broker's messages unmarked: published
    # again by the next claim. Only publishing is cut short by the drain timeout.
    commit = asyncio.Event()
    batch = FakeBatch([job(1, -1)], commit=commit)
    relay = relay_of(FakeSource(batch), FakePublisher(), Metrics(), config(shutdown_timeout=0.1))
    stop = asyncio.Event()
    task = asyncio.create_task(relay.run(stop), name="relay-under-test")
    with capture_logs() as logs:
        await eventually(lambda: batch.committing, 2, "the batch committing")
        stop.set()
        await eventually(
            lambda: any(e["event"] == "drain_timed_out" for e in logs), 2, "the drain timeout"
        )
        await let_ready_tasks_run()  # were the commit cancelled, it would be now
        assert not task.done(), "the relay waits for the commit to end"
        commit.set()
        await asyncio.wait_for(task, 5)
    assert not batch.commit_cut
    assert batch.settled == [PUBLISHED]


class CrashingPublisher(FakePublisher):
    """Raises as a bug of ours would on one row (the legacy NULL payload did before)."""

    def __init__(self, bad_id: int) -> None:
        super().__init__()
        self._bad_id = bad_id

    def publish(self, jobs: Sequence[Job]) -> asyncio.Future[list[Outcome]]:
        if any(job.id == self._bad_id for job in jobs):
            raise AttributeError("'NoneType' object has no attribute 'encode'")
        return super().publish(jobs)


async def test_a_row_that_crashes_publishing_charges_its_batch_and_the_replica_goes_on() -> None:
    poisoned = FakeBatch([job(1, -1), job(2, -1)])
    later = FakeBatch([job(3, -1)])
    publisher = CrashingPublisher(bad_id=2)
    metrics = Metrics()
    relay = relay_of(FakeSource(poisoned, later), publisher, metrics, config())
    with capture_logs() as logs:
        await run_until(relay, lambda: later.settled is not None, "the next batch settled")
    assert poisoned.settled is not None
    assert not poisoned.released
    assert {o.delivery for o in poisoned.settled} == {Delivery.FAILED}  # an attempt each
    assert {o.reason for o in poisoned.settled} == {"replica_error"}
    assert "NoneType" in poisoned.settled[0].error
    assert later.settled == [PUBLISHED]
    assert [entry["event"] for entry in logs].count("batch_publish_crashed") == 1
    failures = metrics.registry.get_sample_value(
        "jobpub_publish_failures_total", {"reason": "replica_error"}
    )
    assert failures == 2
