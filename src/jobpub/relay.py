"""The cycle: claim due rows, publish each at its time, settle, commit.

Depends only on the small Protocols below; the database side (jobpub.db) and the
publisher are passed in by the composition root (jobpub.app).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import structlog

from jobpub.backoff import RECONNECT_MAX_S, Backoff
from jobpub.errors import DatabaseError, DatabaseUnavailable
from jobpub.health import REJOIN_DELAY, DatabaseHealth, Heartbeat
from jobpub.metrics import Metrics
from jobpub.models import Delivery, Job, Outcome, Settled, not_sent
from jobpub.waiting import wait_for_any

log = structlog.get_logger("jobpub.relay")

# What a job not yet sent becomes once its batch has outlived the hold timeout: the
# database has ended the transaction (a frozen replica, thawed), its locks are gone and
# another replica may be publishing the row. Sending it now would only add a copy.
HOLD_EXPIRED = not_sent("hold_expired", "held past the hold timeout; its claim was lost")


class Batch(Protocol):
    """Rows claimed together (jobpub.db.claim.ClaimedBatch)."""

    @property
    def jobs(self) -> list[Job]: ...

    @property
    def claimed_at(self) -> float:
        """time.monotonic() when the rows arrived."""

    @property
    def next_wake_in(self) -> float | None:
        """Seconds from claimed_at until the next known job is due."""


BatchT = TypeVar("BatchT", bound=Batch)
BatchT_co = TypeVar("BatchT_co", bound=Batch, covariant=True)
BatchT_contra = TypeVar("BatchT_contra", bound=Batch, contravariant=True)


class JobSource(Protocol[BatchT_co]):
    async def claim(self, limit: int) -> BatchT_co:
        """Claim up to `limit` due rows."""

    async def check(self) -> None:
        """Return when the database answers; raise DatabaseError when it does not."""


class BatchCompleter(Protocol[BatchT_contra]):
    async def settle(self, batch: BatchT_contra, outcomes: Sequence[Outcome]) -> Settled:
        """Write each job's outcome and commit; the rows leave the queue."""

    async def release(self, batch: BatchT_contra) -> None:
        """Give every row back untouched."""


class RateBudget(Protocol):
    """This replica's share of the fleet-wide rate limit (jobpub.ratelimit.TokenBucket)."""

    def take(self, wanted: int) -> int:
        """Rows that may be claimed now, at most `wanted`; 0 until the budget allows."""

    def give_back(self, unused: int) -> None:
        """Budget taken for rows a claim did not find."""

    def delay(self, wanted: int) -> float:
        """Seconds until `take(wanted)` grants rows."""


# The longest single wait for rate budget: the loop's heartbeat (/healthz) keeps beating
# under a tiny limit, and a new share from the replica heartbeat is taken up soon.
BUDGET_WAIT_MAX = 1.0


class Publisher(Protocol):
    @property
    def connected(self) -> bool: ...

    async def wait_connected(self, timeout: float) -> bool: ...

    def publish(self, jobs: Sequence[Job]) -> Awaitable[list[Outcome]]: ...


@dataclass(frozen=True, slots=True)
class RelayConfig:
    batch_size: int
    concurrency: int
    poll_interval: float
    lookahead: float
    shutdown_timeout: float
    rejoin_delay: float = REJOIN_DELAY
    # Seconds a claim's transaction may stay open (the database's idle timeout on the
    # claiming sessions); None: unbounded.
    hold_timeout: float | None = None


class Slots:
    """Batches in flight: the claim loop takes one per batch, the batch gives it back.

    Not an asyncio.Semaphore: the claim loop must wait for a free slot *or* stop, so
    that SIGTERM is honoured while every batch is out on a broker that does not ack.
    """

    def __init__(self, count: int) -> None:
        self._free = count
        self._freed = asyncio.Event()

    async def take(self, stop: asyncio.Event) -> bool:
        """A slot, once one is free; False (and no slot) once `stop` is set."""
        while self._free == 0 and not stop.is_set():
            self._freed.clear()
            await wait_for_any((self._freed, stop), None)
        if stop.is_set():
            return False
        self._free -= 1
        return True

    def give_back(self) -> None:
        self._free += 1
        self._freed.set()


class Relay(Generic[BatchT]):
    """One replica's cycle. `run` claims; each claimed batch is delivered by its own task.

    `health` and `heartbeat` are read by /readyz and /healthz; the relay writes them
    (DatabaseHealth says which task writes what).
    """

    def __init__(
        self,
        source: JobSource[BatchT],
        completer: BatchCompleter[BatchT],
        publisher: Publisher,
        metrics: Metrics,
        config: RelayConfig,
        *,
        health: DatabaseHealth | None = None,
        heartbeat: Heartbeat | None = None,
        budget: RateBudget | None = None,
    ) -> None:
        self._source = source
        self._completer = completer
        self._publisher = publisher
        self._metrics = metrics
        self._config = config
        self.health = health or DatabaseHealth()
        self.heartbeat = heartbeat or Heartbeat()
        self._budget = budget  # None: no rate limit
        self._wake = asyncio.Event()
        self._wake_at: float | None = None  # monotonic time of the next known due job

    def notify(self, hint_epoch: float | None) -> None:
        """New or changed jobs (from NOTIFY). `hint_epoch` is the earliest new fire_at.

        A hint well after the wake already planned is ignored; anything else wakes the
        claim loop, whose next-wake query then sets the timer by the database clock.
        """
        if hint_epoch is not None and self._wake_at is not None:
            hint_at = time.monotonic() + (hint_epoch - time.time())
            if hint_at > self._wake_at + 1.0:  # 1 s: tolerated clock skew to the database
                return
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        slots = Slots(self._config.concurrency)
        deliveries: set[asyncio.Task[None]] = set()
        async with asyncio.TaskGroup() as group:
            try:
                await self._claim_loop(stop, slots, group, deliveries)
            finally:
                await self._drain(deliveries)

    async def _claim_loop(
        self,
        stop: asyncio.Event,
        slots: Slots,
        group: asyncio.TaskGroup,
        deliveries: set[asyncio.Task[None]],
    ) -> None:
        config = self._config
        backoff = Backoff(initial=0.2, maximum=RECONNECT_MAX_S)
        numbers = itertools.count(1)
        health = self.health
        while not stop.is_set():
            self.heartbeat.beat()
            if not self._publisher.connected:
                # Claiming with no broker would only hold locks: wait for it.
                await self._publisher.wait_connected(timeout=min(1.0, config.poll_interval))
                continue
            if not await slots.take(stop):
                break  # stopped while every slot was busy: claim nothing more
            if health.needs_rejoin:
                # Checked with the slot in hand: a batch may lose its commit while this
                # loop waits for the slot.
                slots.give_back()
                try:
                    await self._source.check()
                except DatabaseError as exc:
                    await self._database_failed(exc, backoff, stop)
                    continue
                await self._rejoin_after_loss(stop)
                backoff.reset()
                continue
            limit = await self._claim_size(stop)
            if not limit:
                slots.give_back()
                break  # stopped while waiting for rate budget
            try:
                batch = await self._source.claim(limit)
            except DatabaseError as exc:
                # Unreachable, or the claim itself failed (a permission, a row the
                # database cannot evaluate): stay up, not ready, and try again.
                slots.give_back()
                self._give_back_budget(limit)
                await self._database_failed(exc, backoff, stop)
                continue
            if health.claimed():
                log.info("database_available")
            self._show_health()
            backoff.reset()
            self._wake.clear()
            self._give_back_budget(limit - len(batch.jobs))
            if batch.jobs:
                task = group.create_task(
                    self._deliver(batch, slots), name=f"deliver-batch-{next(numbers)}"
                )
                deliveries.add(task)
                task.add_done_callback(deliveries.discard)
            else:
                await self._completer.release(batch)
                slots.give_back()
            if len(batch.jobs) >= limit:
                continue  # a backlog: claim the next batch at once (or when budget allows)
            await self._sleep_until_due(batch, stop)

    async def _claim_size(self, stop: asyncio.Event) -> int:
        """Rows the next claim may take: the batch size, or what the rate budget allows
        once it allows any (0 if stopped first). Rows held back stay pending: late, never
        dropped."""
        wanted = self._config.batch_size
        budget = self._budget
        if budget is None:
            return wanted
        granted = budget.take(wanted)
        if granted:
            return granted
        started = time.monotonic()
        while not stop.is_set() and not (granted := budget.take(wanted)):
            self.heartbeat.beat()
            await wait_for_any((stop,), min(budget.delay(wanted), BUDGET_WAIT_MAX))
        self._metrics.throttled.inc(time.monotonic() - started)
        return granted

    def _give_back_budget(self, unused: int) -> None:
        if self._budget is not None and unused > 0:
            self._budget.give_back(unused)

    async def _database_failed(
        self, exc: DatabaseError, backoff: Backoff, stop: asyncio.Event
    ) -> None:
        """Not ready; say so once, not per retry; wait the backoff out."""
        unavailable = isinstance(exc, DatabaseUnavailable)
        started_outage = self.health.failed(unavailable=unavailable)
        self._show_health()
        delay = backoff.next()
        if started_outage:
            if unavailable:
                log.warning("database_unavailable", error=str(exc), retry_in_s=round(delay, 2))
            else:
                log.error("claim_failed", error=str(exc), retry_in_s=round(delay, 2),
                          exc_info=exc)  # fmt: skip
        await wait_for_any((stop,), delay)

    async def _rejoin_after_loss(self, stop: asyncio.Event) -> None:
        """The database answers again after connections were lost: wait before claiming.

        Rows other replicas were publishing lost their locks with their connections, and
        as the oldest due rows a claim takes them first. Their owners mark them on new
        connections once the acks are in (jobpub.db.complete, up to 0.6 s after the loss
        near capacity); claiming at once published them twice.
        """
        self.health.rejoining()
        self._show_health()
        log.info("database_available", claiming_in_s=self._config.rejoin_delay)
        await wait_for_any((stop,), self._config.rejoin_delay)

    def _show_health(self) -> None:
        self._metrics.database_up.set(1 if self.health.ready else 0)

    async def _sleep_until_due(self, batch: BatchT, stop: asyncio.Event) -> None:
        """Wait for a notification, the next known job, the poll interval, or stop."""
        now = time.monotonic()
        timeout = self._config.poll_interval
        self._wake_at = None
        if batch.next_wake_in is not None:
            # Claim again when the next job enters the lookahead window's second half,
            # so it is held a while before its time and published on the dot.
            self._wake_at = batch.claimed_at + batch.next_wake_in
            timeout = min(timeout, self._wake_at - self._config.lookahead / 2 - now)
        if timeout > 0:
            await wait_for_any((self._wake, stop), timeout)

    async def _deliver(self, batch: BatchT, slots: Slots) -> None:
        try:
            started = time.monotonic()
            try:
                outcomes = await self._publish_on_time(batch)
            except Exception as exc:
                # A fault of ours that some row provokes: ending the replica would hand the
                # row to the next one, and so on. Charge the batch an attempt instead, so
                # the row goes dead after JOBPUB_MAX_ATTEMPTS and the others are retried.
                log.exception("batch_publish_crashed", count=len(batch.jobs))
                outcomes = [_crashed(exc)] * len(batch.jobs)
            except BaseException:
                await asyncio.shield(self._completer.release(batch))
                raise
            published_at = time.monotonic()
            if all(outcome is HOLD_EXPIRED for outcome in outcomes):
                await self._give_up_expired(batch)
                return
            settling = asyncio.create_task(
                self._completer.settle(batch, outcomes), name=f"{_task_name()}-settle"
            )
            cancelled = await _wait_through_cancellation(settling)
            try:
                settled = settling.result()
            except DatabaseError as exc:
                self.health.report_settle_failed()
                self._show_health()
                # The broker has these messages; another replica will publish them again.
                log.exception("batch_settle_failed", count=len(batch.jobs), error=str(exc))
            else:
                if settled.commit_lost:
                    self.health.report_commit_lost()  # the others' batches were likely lost too
                self._record(batch, settled, outcomes, started, published_at)
            if cancelled:
                raise asyncio.CancelledError
        finally:
            slots.give_back()

    async def _give_up_expired(self, batch: BatchT) -> None:
        """Nothing of the batch was sent before its hold ran out: give it back unsent."""
        await self._completer.release(batch)  # the transaction is gone: nothing to undo
        self._metrics.released.inc(len(batch.jobs))
        log.warning(
            "batch_hold_expired", count=len(batch.jobs),
            held_s=round(time.monotonic() - batch.claimed_at, 1),
        )  # fmt: skip

    async def _publish_on_time(self, batch: BatchT) -> list[Outcome]:
        """Publish each job no earlier than its fire_at; jobs due together go together.

        Jobs not yet sent when the batch outlives the hold timeout are HOLD_EXPIRED.
        """
        jobs = batch.jobs
        origin = batch.claimed_at  # due_in counts from the database's now() before this
        hold_timeout = self._config.hold_timeout
        pending: list[Awaitable[list[Outcome]]] = []
        lag = self._metrics.lag
        start = 0
        while start < len(jobs):
            now = time.monotonic()
            if hold_timeout is not None and now - origin > hold_timeout:
                break  # frozen past the hold (SIGSTOP): the claim is lost, send no more
            end = start
            while end < len(jobs) and origin + jobs[end].due_in <= now:
                end += 1
            if end > start:
                ready = jobs[start:end]
                lag.observe_many([now - origin - job.due_in for job in ready])
                pending.append(self._publisher.publish(ready))
                start = end
            else:
                await asyncio.sleep(origin + jobs[start].due_in - now)
        sent = [outcome for group in await asyncio.gather(*pending) for outcome in group]
        return sent + [HOLD_EXPIRED] * (len(jobs) - start)

    def _record(
        self,
        batch: BatchT,
        settled: Settled,
        outcomes: Sequence[Outcome],
        started: float,
        published_at: float,
    ) -> None:
        metrics = self._metrics
        metrics.batch_size.observe(len(batch.jobs))
        metrics.publish_duration.observe(published_at - started)
        metrics.commit_duration.observe(time.monotonic() - published_at)
        metrics.published.inc(settled.published)
        metrics.dead.inc(settled.dead)
        metrics.released.inc(settled.released)
        failures = [o for o in outcomes if o.delivery in (Delivery.REJECTED, Delivery.FAILED)]
        for outcome in failures:
            metrics.failures.labels(reason=outcome.reason).inc()
        log.info(
            "batch_published",
            claimed=len(batch.jobs),
            published=settled.published,
            dead=settled.dead,
            retrying=settled.retrying,
            released=settled.released,
            publish_ms=round((published_at - started) * 1000, 1),
            commit_ms=round((time.monotonic() - published_at) * 1000, 1),
            **({"first_error": failures[0].error} if failures else {}),
        )

    async def _drain(self, deliveries: set[asyncio.Task[None]]) -> None:
        """On stop: let in-flight batches finish for `shutdown_timeout`, then cancel them."""
        if not deliveries:
            return
        log.info("draining", batches=len(deliveries))
        _, late = await asyncio.wait(set(deliveries), timeout=self._config.shutdown_timeout)
        for task in late:
            task.cancel()
        if late:
            log.warning("drain_timed_out", cancelled_batches=len(late))


async def _wait_through_cancellation(task: asyncio.Task[Settled]) -> bool:
    """Wait until `task` is done even if this one is cancelled meanwhile (a drain timeout):
    a commit cut halfway leaves acknowledged messages unmarked, to be published again.
    True if a cancellation arrived; the caller raises it once the task is done."""
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    return cancelled


def _crashed(exc: Exception) -> Outcome:
    error = f"replica error while publishing: {exc!r}"
    return Outcome(Delivery.FAILED, "replica_error", error[:500])


def _task_name() -> str:
    task = asyncio.current_task()
    return task.get_name() if task is not None else "deliver-batch"
