"""Completing claimed batches: mark published, retry with backoff, dead; or release.

A service over the database, not a method of the batch: the batch is a value, and
this is the one place that knows how outcomes become rows, including re-marking the
published rows of a batch whose commit was lost, with a retry loop of its own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
import structlog

from jobpub.backoff import Backoff
from jobpub.db import queries
from jobpub.db.claim import ClaimedBatch
from jobpub.db.database import UNAVAILABLE, Connection, Database, connect, database_errors
from jobpub.errors import DatabaseError, DatabaseUnavailable, SchemaMissing
from jobpub.health import MARK_AFTER_LOSS_RETRY_MAX_S, MARK_AFTER_LOSS_WITHIN
from jobpub.models import Delivery, Outcome, Settled

log = structlog.get_logger("jobpub.db.complete")

# Each re-mark attempt: a restarting server refuses at once or answers in well under this.
MARK_AFTER_LOSS_CONNECT_TIMEOUT = 2


# queries.MARK_RETRY's arithmetic: the doubling stops at this exponent, and jitter takes
# a delay down to at most this share of its ceiling.
BACKOFF_EXPONENT_CAP = 62
JITTER_FLOOR = 0.5


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    backoff: float  # seconds before the second attempt; doubles per attempt, with jitter
    backoff_max: float

    def ceiling(self, failed_attempts: int) -> float:
        """The longest wait after `failed_attempts` failures (the shortest is half)."""
        exponent = min(failed_attempts - 1, BACKOFF_EXPONENT_CAP)
        return min(self.backoff_max, self.backoff * 2.0**exponent)

    def lifetime(self) -> tuple[float, float]:
        """Shortest and longest seconds from a job's first failure to its last attempt,
        when every attempt fails (the attempts themselves taken as instant)."""
        longest = sum(self.ceiling(failed) for failed in range(1, self.max_attempts))
        return JITTER_FLOOR * longest, longest


@dataclass(slots=True)
class _Sorted:
    """A batch's job ids by what the statements do with them."""

    published: list[int]
    dead_ids: list[int]
    dead_errors: list[str]
    retry_ids: list[int]
    retry_errors: list[str]
    released: int
    expired: list[int]


def _sort(batch: ClaimedBatch, outcomes: Sequence[Outcome]) -> _Sorted:
    sorted_ = _Sorted(
        [], [r.id for r in batch.refused], [r.reason for r in batch.refused], [], [], 0,
        list(batch.expired),
    )  # fmt: skip
    for job, outcome in zip(batch.jobs, outcomes, strict=True):
        if outcome.delivery is Delivery.PUBLISHED:
            sorted_.published.append(job.id)
        elif outcome.delivery is Delivery.REJECTED:
            sorted_.dead_ids.append(job.id)
            sorted_.dead_errors.append(outcome.error)
        elif outcome.delivery is Delivery.FAILED:
            sorted_.retry_ids.append(job.id)
            sorted_.retry_errors.append(outcome.error)
        elif outcome.delivery is Delivery.EXPIRED:
            sorted_.expired.append(job.id)
        else:
            sorted_.released += 1
    return sorted_


class Completer:
    """Writes what became of each claimed batch and ends its transaction."""

    def __init__(self, database: Database, retry: RetryPolicy) -> None:
        self._database = database
        self._retry = retry

    async def settle(self, batch: ClaimedBatch, outcomes: Sequence[Outcome]) -> Settled:
        """Write what happened to each job and commit: the rows leave the queue."""
        rows = _sort(batch, outcomes)
        connection = batch.transaction.take()
        dead = len(rows.dead_ids)
        try:
            with database_errors("marking a batch"):
                async with connection.cursor() as cursor:
                    if rows.published:
                        await cursor.execute(queries.MARK_PUBLISHED, {"ids": rows.published})
                    if rows.dead_ids:
                        await cursor.execute(
                            queries.MARK_DEAD, {"ids": rows.dead_ids, "errors": rows.dead_errors}
                        )
                    if rows.retry_ids:
                        await cursor.execute(
                            queries.MARK_RETRY,
                            {
                                "ids": rows.retry_ids,
                                "errors": rows.retry_errors,
                                "max_attempts": self._retry.max_attempts,
                                "backoff": self._retry.backoff,
                                "backoff_max": self._retry.backoff_max,
                            },
                        )
                        dead += sum(1 for (is_dead,) in await cursor.fetchall() if is_dead)
                    if rows.expired:
                        await cursor.execute(queries.MARK_EXPIRED, {"ids": rows.expired})
                    if batch.held:
                        await cursor.execute(queries.NOTIFY_HELD_ROWS)
                await connection.commit()
        except DatabaseUnavailable as exc:
            if not rows.published or isinstance(exc, SchemaMissing):
                raise
            lost = exc
        else:
            _log_refused(batch)
            return Settled(
                published=len(rows.published),
                dead=dead,
                retrying=len(rows.retry_ids) - (dead - len(rows.dead_ids)),
                released=rows.released + batch.held,
                expired=len(rows.expired),
            )
        finally:
            await self._database.give_back(connection)
        marked = await self._mark_after_loss(batch, rows.published)
        log.warning("batch_commit_lost", error=str(lost), published=len(rows.published),
                    marked_again=marked)  # fmt: skip
        return Settled(
            published=marked,
            dead=0,
            retrying=0,
            released=len(batch.jobs) - marked,
            commit_lost=True,
        )

    async def release(self, batch: ClaimedBatch) -> None:
        """Give every row back untouched (roll back), except refused rows: they go dead,
        and expired rows end expired, since no later claim could publish them either."""
        if not batch.transaction.is_open:
            return
        connection = batch.transaction.take()
        try:
            if batch.refused or batch.expired:
                await self._mark_refused(connection, batch)
            else:
                await connection.rollback()
        except UNAVAILABLE:
            pass  # the connection is gone, and with it the locks: the rows are free already
        finally:
            await self._database.give_back(connection)

    async def _mark_refused(self, connection: Connection, batch: ClaimedBatch) -> None:
        try:
            with database_errors("marking refused rows dead"):
                async with connection.cursor() as cursor:
                    if batch.refused:
                        await cursor.execute(
                            queries.MARK_DEAD,
                            {
                                "ids": [r.id for r in batch.refused],
                                "errors": [r.reason for r in batch.refused],
                            },
                        )
                    if batch.expired:
                        await cursor.execute(queries.MARK_EXPIRED, {"ids": batch.expired})
                    if batch.held:
                        await cursor.execute(queries.NOTIFY_HELD_ROWS)
                await connection.commit()
        except DatabaseError as exc:
            # A release never fails: the rows are claimed again and refused again.
            await connection.rollback()
            log.warning(
                "refused_rows_not_marked",
                count=len(batch.refused) + len(batch.expired),
                error=str(exc),
            )
        else:
            _log_refused(batch)

    async def _mark_after_loss(self, batch: ClaimedBatch, published: list[int]) -> int:
        """The transaction died with rows the broker has: mark them on a new connection,
        before another replica claims them, so they are not published twice.

        A connection of its own, not the pool's: when the server dropped one connection
        it has usually dropped them all. Tried until the server answers again, for up to
        MARK_AFTER_LOSS_WITHIN (a restarting server).
        """
        versions = {job.id: job.version for job in batch.jobs}
        params = {"ids": published, "versions": [versions[i] for i in published]}
        deadline = time.monotonic() + MARK_AFTER_LOSS_WITHIN
        backoff = Backoff(initial=0.05, maximum=MARK_AFTER_LOSS_RETRY_MAX_S)
        with database_errors("marking a batch again after its connection was lost"):
            while True:
                try:
                    async with await connect(
                        self._database.url,
                        autocommit=True,
                        connect_timeout=MARK_AFTER_LOSS_CONNECT_TIMEOUT,
                    ) as connection:
                        cursor = await connection.execute(queries.MARK_PUBLISHED_AFTER_LOSS, params)
                        return cursor.rowcount
                except psycopg.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(backoff.next())


def _log_refused(batch: ClaimedBatch) -> None:
    if batch.refused:
        log.warning("rows_refused", count=len(batch.refused), first_error=batch.refused[0].reason)
    if batch.expired:
        log.info("jobs_expired", count=len(batch.expired), by="claim")
