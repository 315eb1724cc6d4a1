"""Claiming due rows: what a claim asks for, which lane it takes, and what it returns."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
import structlog

from jobpub.db import queries
from jobpub.db.database import Database, Transaction, database_errors
from jobpub.metrics import Metrics
from jobpub.models import Job

log = structlog.get_logger("jobpub.db.claim")


@dataclass(frozen=True, slots=True)
class ClaimConfig:
    limit: int  # rows per claim (JOBPUB_BATCH_SIZE)
    lookahead: float
    consumer_count: int
    consumer_index: int
    takeover_delay: float
    max_payload_bytes: int  # a longer payload is refused unread (JOBPUB_MAX_PAYLOAD_BYTES)
    batch_max_bytes: int  # topic and payload bytes per claim (JOBPUB_BATCH_MAX_BYTES)

    def params(self) -> dict[str, object]:
        return {
            "limit": self.limit,
            "max_payload_bytes": self.max_payload_bytes,
            "batch_max_bytes": self.batch_max_bytes,
            "lookahead": self.lookahead,
            "consumer_count": self.consumer_count,
            "consumer_index": self.consumer_index,
            "takeover_delay": self.takeover_delay,
        }


@dataclass(frozen=True, slots=True)
class Refusal:
    """A claimed row no replica can publish (queries.CLAIM_DUE_JOBS, `refusal`)."""

    id: int
    reason: str  # stored as the row's last_error


@dataclass(frozen=True, slots=True)
class ClaimedBatch:
    """Claimed rows, locked by `transaction` until a Completer settles or releases them.

    `jobs` are to publish. `refused` are never published: the Completer marks them dead
    whether the batch is settled or released; `expired` likewise, marked expired. `held`
    rows are past the claim's byte bound: locked but unread, free again when the
    transaction ends.
    """

    jobs: list[Job]
    # time.monotonic() just after the claim's transaction began: a job's due_in counts
    # from that transaction's now(), which is no later, so a job held until claimed_at +
    # due_in is never early. Not when the rows arrived: fetching 5,000 rows took 30-40 ms
    # under load, and every held job was published that much late.
    claimed_at: float
    next_wake_in: float | None  # seconds from claimed_at until the next known job is due
    transaction: Transaction
    refused: list[Refusal] = field(default_factory=list)
    held: int = 0
    expired: list[int] = field(default_factory=list)  # ids claimed after their expiry


class LanePicker:
    """Which lane, if any, the next claim takes (see queries.CLAIM_DUE_JOBS_IN_LANE).

    Only under a backlog (the last claim was full) and with no static partition. A
    replica starts at a random lane and moves one lane on per claim, so its own claims
    never share a lane and other replicas' rarely do. A lane that comes back short is
    nearly drained: the claim falls back to all lanes, and lanes rest for a round.
    """

    def __init__(self, *, enabled: bool) -> None:
        self._enabled = enabled
        self._next = random.randrange(queries.LANES)  # noqa: S311 - spreading, not secrecy
        self._resting = 0  # claims to make over all lanes before trying lanes again
        self.backlog = False

    def pick(self) -> int | None:
        if not (self._enabled and self.backlog):
            return None
        if self._resting:
            self._resting -= 1
            return None
        lane, self._next = self._next, (self._next + 1) % queries.LANES
        return lane

    def rest(self) -> None:
        self._resting = queries.LANES


# Pending rows past their expiry that no claim takes (paused, or expiring before their
# fire_at) are expired by a sweep before a claim, at most this often, in batches of
# EXPIRY_SWEEP_LIMIT: one index probe when there are none (queries.EXPIRE_OVERDUE).
EXPIRY_SWEEP_INTERVAL = 1.0
EXPIRY_SWEEP_LIMIT = 1000


class Claimer:
    """Claims due rows, each batch in a transaction of its own on a pooled connection."""

    def __init__(self, database: Database, config: ClaimConfig, metrics: Metrics) -> None:
        self._database = database
        self._config = config
        self._metrics = metrics
        self._lanes = LanePicker(enabled=config.consumer_count == 1)
        self._next_sweep = 0.0  # time.monotonic() from which the next claim sweeps first

    async def claim(self, limit: int | None = None) -> ClaimedBatch:
        """Claim up to `limit` due rows (the configured batch size if None) in a new
        transaction; a Completer settles or releases the batch."""
        started = time.monotonic()
        limit = limit or self._config.limit
        with database_errors("claiming jobs"):
            connection = await self._database.acquire()
            try:
                async with connection.cursor() as cursor:
                    if time.monotonic() >= self._next_sweep:
                        await self._sweep_expired(cursor)
                        await connection.commit()
                    lane = self._lanes.pick()
                    # No later than the claim's now(): deadlines counted from here are
                    # never later than the database's (an expiry interval never too long).
                    origin = time.monotonic()
                    rows, claimed_at = await self._claim_rows(cursor, lane, limit)
                    if lane is not None and len(rows) < limit:
                        # This lane is nearly drained: give its rows back and take the
                        # oldest of all lanes, so a backlog never looks like its end.
                        await connection.rollback()
                        self._lanes.rest()
                        origin = time.monotonic()
                        rows, claimed_at = await self._claim_rows(cursor, None, limit)
                    self._lanes.backlog = len(rows) >= limit
                    jobs, refused, held, expired = _sort_claimed(rows, origin)
                    next_wake_in: float | None = None
                    if held:
                        next_wake_in = 0.0  # due rows are waiting: claim again at once
                    elif len(rows) < limit:
                        await cursor.execute(queries.NEXT_WAKE, self._config.params())
                        found = await cursor.fetchone()
                        next_wake_in = found[0] if found else None
            except BaseException:
                await self._database.discard(connection)
                raise
        self._metrics.claim_duration.observe(time.monotonic() - started)
        return ClaimedBatch(
            jobs=jobs,
            claimed_at=claimed_at,
            next_wake_in=next_wake_in,
            transaction=Transaction(connection),
            refused=refused,
            held=held,
            expired=expired,
        )

    async def check(self) -> None:
        """Return when the database answers; raise DatabaseUnavailable when it does not."""
        await self._database.check()

    async def _sweep_expired(self, cursor: psycopg.AsyncCursor[Any]) -> None:
        """Expire overdue pending rows, a bounded batch; again at once if it was full."""
        await cursor.execute(queries.EXPIRE_OVERDUE, {"limit": EXPIRY_SWEEP_LIMIT})
        if cursor.rowcount > 0:
            log.info("jobs_expired", count=cursor.rowcount, by="sweep")
        full = cursor.rowcount >= EXPIRY_SWEEP_LIMIT
        self._next_sweep = time.monotonic() + (0.0 if full else EXPIRY_SWEEP_INTERVAL)

    async def _claim_rows(
        self, cursor: psycopg.AsyncCursor[Any], lane: int | None, limit: int
    ) -> tuple[list[tuple[Any, ...]], float]:
        """The claimed rows, and time.monotonic() once their transaction had begun (the
        first statement's answer: the transaction's now() came before it)."""
        await cursor.execute(queries.CLAIM_PLAN)
        began = time.monotonic()
        params = {**self._config.params(), "limit": limit}
        if lane is None:
            await cursor.execute(queries.CLAIM_DUE_JOBS, params)
        else:
            await cursor.execute(queries.CLAIM_DUE_JOBS_IN_LANE, {**params, "lane": lane})
        return await cursor.fetchall(), began


# Columns of the claim statements: the Job's fields (`expires` as seconds left), then
# `expired`, `refusal` and `held`.
_JOB_COLUMNS = len(Job._fields)
_EXPIRES = Job._fields.index("expires")


def _sort_claimed(
    rows: list[tuple[Any, ...]], origin: float
) -> tuple[list[Job], list[Refusal], int, list[int]]:
    """Jobs to publish, rows refused, how many rows were held past the byte bound, and
    the ids of rows claimed after their expiry. `origin`: time.monotonic() at the claim,
    from which a job's seconds to expiry count."""
    if not any(
        row[-1] or row[-2] is not None or row[-3] or row[_EXPIRES] is not None for row in rows
    ):  # the common case
        return [Job._make(row[:_JOB_COLUMNS]) for row in rows], [], 0, []
    jobs: list[Job] = []
    refused: list[Refusal] = []
    expired: list[int] = []
    held = 0
    for row in rows:
        if row[-2] is not None:
            refused.append(Refusal(row[0], row[-2]))
        elif row[-3]:
            expired.append(row[0])
        elif row[-1]:
            held += 1
        elif row[_EXPIRES] is None:
            jobs.append(Job._make(row[:_JOB_COLUMNS]))
        else:
            jobs.append(Job._make((*row[:_EXPIRES], origin + row[_EXPIRES])))
    return jobs, refused, held, expired
