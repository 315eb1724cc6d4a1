"""The database side: the only module that imports psycopg."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from jobpub import queries
from jobpub.backoff import RECONNECT_MAX_S, Backoff
from jobpub.errors import DatabaseError, DatabaseUnavailable, SchemaMissing
from jobpub.metrics import Metrics
from jobpub.models import Delivery, Job, Outcome, Settled
from jobpub.settings import Settings
from jobpub.waiting import wait_for_event

log = structlog.get_logger("jobpub.store")

# How long a replica keeps trying to mark rows whose commit was lost. While the
# database is away no replica can claim them again, and a restart's shutdown checkpoint
# can take many seconds (2.7 s here under load, far longer with large shared_buffers);
# once it answers, the others wait 1 s before claiming (Relay._rejoin_after_loss).
# Well under the 60 s after which /healthz calls a claim loop waiting on its slots stalled.
MARK_AFTER_LOSS_WITHIN = 30.0
# Between attempts: short enough to mark well within that 1 s, long enough not to
# hammer a server that is starting up.
MARK_AFTER_LOSS_RETRY_MAX_S = 0.25

# Errors that mean "the database is not there right now", as opposed to a bug.
_UNAVAILABLE = (psycopg.OperationalError, PoolTimeout, pg_errors.AdminShutdown)
_SCHEMA = (pg_errors.UndefinedTable, pg_errors.UndefinedColumn, pg_errors.UndefinedFunction)


def database_errors(action: str) -> _Translate:
    return _Translate(action)


class _Translate:
    """Turn psycopg's errors into ours, so the cycle never imports psycopg."""

    def __init__(self, action: str) -> None:
        self._action = action

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is None:
            return
        if isinstance(exc, _SCHEMA):
            raise SchemaMissing(
                f"{self._action}: the jobs table is missing or old; run `jobpub migrate` ({exc})"
            ) from exc
        if isinstance(exc, _UNAVAILABLE):
            raise DatabaseUnavailable(f"{self._action}: {str(exc).strip()}") from exc
        if isinstance(exc, psycopg.Error):
            raise DatabaseError(f"{self._action}: {str(exc).strip()}") from exc


@dataclass(frozen=True, slots=True)
class ClaimQuery:
    limit: int
    lookahead: float
    consumer_count: int
    consumer_index: int
    takeover_delay: float

    def params(self) -> dict[str, object]:
        return {
            "limit": self.limit,
            "lookahead": self.lookahead,
            "consumer_count": self.consumer_count,
            "consumer_index": self.consumer_index,
            "takeover_delay": self.takeover_delay,
        }


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


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    backoff: float
    backoff_max: float


class ClaimedBatch:
    """Claimed rows, locked by an open transaction until `settle` or `release`."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
        url: str,
        connection: psycopg.AsyncConnection[Any],
        jobs: list[Job],
        claimed_at: float,
        next_wake_in: float | None,
        retry: RetryPolicy,
    ) -> None:
        self._pool = pool
        self._url = url  # for a connection of its own when the pool's are gone
        self._connection: psycopg.AsyncConnection[Any] | None = connection
        self.jobs = jobs
        self.claimed_at = claimed_at  # time.monotonic() when the rows arrived
        self.next_wake_in = next_wake_in
        self._retry = retry

    async def settle(self, outcomes: Sequence[Outcome]) -> Settled:
        """Write what happened to each job and commit: the rows leave the queue."""
        published: list[int] = []
        dead_ids: list[int] = []
        dead_errors: list[str] = []
        retry_ids: list[int] = []
        retry_errors: list[str] = []
        released = 0
        for job, outcome in zip(self.jobs, outcomes, strict=True):
            if outcome.delivery is Delivery.PUBLISHED:
                published.append(job.id)
            elif outcome.delivery is Delivery.REJECTED:
                dead_ids.append(job.id)
                dead_errors.append(outcome.error)
            elif outcome.delivery is Delivery.FAILED:
                retry_ids.append(job.id)
                retry_errors.append(outcome.error)
            else:
                released += 1
        connection = self._take_connection()
        dead = len(dead_ids)
        try:
            with database_errors("marking a batch"):
                async with connection.cursor() as cursor:
                    if published:
                        await cursor.execute(queries.MARK_PUBLISHED, {"ids": published})
                    if dead_ids:
                        await cursor.execute(
                            queries.MARK_DEAD, {"ids": dead_ids, "errors": dead_errors}
                        )
                    if retry_ids:
                        await cursor.execute(
                            queries.MARK_RETRY,
                            {
                                "ids": retry_ids,
                                "errors": retry_errors,
                                "max_attempts": self._retry.max_attempts,
                                "backoff": self._retry.backoff,
                                "backoff_max": self._retry.backoff_max,
                            },
                        )
                        dead += sum(1 for (is_dead,) in await cursor.fetchall() if is_dead)
                await connection.commit()
        except DatabaseUnavailable as exc:
            if not published or isinstance(exc, SchemaMissing):
                raise
            lost = exc
        else:
            return Settled(
                published=len(published),
                dead=dead,
                retrying=len(retry_ids) - (dead - len(dead_ids)),
                released=released,
            )
        finally:
            await self._pool.putconn(connection)
        marked = await self._mark_after_loss(published)
        log.warning("batch_commit_lost", error=str(lost), published=len(published),
                    marked_again=marked)  # fmt: skip
        return Settled(
            published=marked,
            dead=0,
            retrying=0,
            released=len(self.jobs) - marked,
            commit_lost=True,
        )

    async def _mark_after_loss(self, published: list[int]) -> int:
        """The transaction died with rows the broker has: mark them on a new connection,
        before another replica claims them, so they are not published twice.

        A connection of its own, not the pool's: when the server dropped one connection
        it has usually dropped them all. Tried until the server answers again, for up to
        MARK_AFTER_LOSS_WITHIN (a restarting server).
        """
        versions = {job.id: job.version for job in self.jobs}
        params = {"ids": published, "versions": [versions[i] for i in published]}
        deadline = time.monotonic() + MARK_AFTER_LOSS_WITHIN
        backoff = Backoff(initial=0.05, maximum=MARK_AFTER_LOSS_RETRY_MAX_S)
        with database_errors("marking a batch again after its connection was lost"):
            while True:
                try:
                    async with await psycopg.AsyncConnection.connect(
                        self._url, autocommit=True, connect_timeout=2
                    ) as connection:
                        cursor = await connection.execute(queries.MARK_PUBLISHED_AFTER_LOSS, params)
                        return cursor.rowcount
                except psycopg.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(backoff.next())

    async def release(self) -> None:
        """Give every row back untouched (roll back)."""
        if self._connection is None:
            return
        connection = self._take_connection()
        try:
            await connection.rollback()
        except _UNAVAILABLE:
            pass  # the connection is gone, and with it the locks: the rows are free already
        finally:
            await self._pool.putconn(connection)

    def _take_connection(self) -> psycopg.AsyncConnection[Any]:
        connection, self._connection = self._connection, None
        if connection is None:
            raise RuntimeError("batch already settled or released")
        return connection


class PostgresStore:
    """Claims, marks, listens. Connections come from one pool sized to the concurrency."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._url = settings.database_url.get_secret_value()
        self._metrics = metrics
        self._claim = ClaimQuery(
            limit=settings.batch_size,
            lookahead=settings.lookahead,
            consumer_count=settings.consumer_count,
            consumer_index=settings.consumer_index,
            takeover_delay=settings.takeover_delay,
        )
        self._lanes = LanePicker(enabled=settings.consumer_count == 1)
        self._listen_error = ""  # the last listen failure logged
        self._retry = RetryPolicy(
            settings.max_attempts, settings.retry_backoff, settings.retry_backoff_max
        )
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            self._url,
            min_size=settings.concurrency,
            max_size=settings.concurrency + 1,  # + the backlog sampler
            open=False,
            name="jobpub",
            timeout=5.0,
            reconnect_timeout=float("inf"),  # keep trying for as long as we run
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    async def claim(self) -> ClaimedBatch:
        """Claim due rows in a new transaction; the caller settles or releases the batch."""
        started = time.monotonic()
        with database_errors("claiming jobs"):
            connection = await self._getconn()
            try:
                async with connection.cursor() as cursor:
                    lane = self._lanes.pick()
                    rows = await self._claim_rows(cursor, lane)
                    if lane is not None and len(rows) < self._claim.limit:
                        # This lane is nearly drained: give its rows back and take the
                        # oldest of all lanes, so a backlog never looks like its end.
                        await connection.rollback()
                        self._lanes.rest()
                        rows = await self._claim_rows(cursor, None)
                    self._lanes.backlog = len(rows) >= self._claim.limit
                    claimed_at = time.monotonic()
                    next_wake_in = None
                    if len(rows) < self._claim.limit:
                        await cursor.execute(queries.NEXT_WAKE, self._claim.params())
                        found = await cursor.fetchone()
                        next_wake_in = found[0] if found else None
            except BaseException:
                await _discard(self._pool, connection)
                raise
        self._metrics.claim_duration.observe(claimed_at - started)
        jobs = list(map(Job._make, rows))
        return ClaimedBatch(
            pool=self._pool,
            url=self._url,
            connection=connection,
            jobs=jobs,
            claimed_at=claimed_at,
            next_wake_in=next_wake_in,
            retry=self._retry,
        )

    async def _claim_rows(
        self, cursor: psycopg.AsyncCursor[Any], lane: int | None
    ) -> list[tuple[Any, ...]]:
        await cursor.execute(queries.CLAIM_PLAN)
        if lane is None:
            await cursor.execute(queries.CLAIM_DUE_JOBS, self._claim.params())
        else:
            await cursor.execute(
                queries.CLAIM_DUE_JOBS_IN_LANE, {**self._claim.params(), "lane": lane}
            )
        return await cursor.fetchall()

    async def check(self) -> None:
        """Return when the database answers a query; raise DatabaseUnavailable if not."""
        with database_errors("reaching the database"):
            connection = await self._getconn()
            try:
                await connection.execute(queries.PING)
            finally:
                await _discard(self._pool, connection)

    async def _getconn(self) -> psycopg.AsyncConnection[Any]:
        try:
            return await self._pool.getconn()
        except PoolTimeout as exc:
            raise PoolTimeout(f"{exc}; {await self._connect_error()}") from exc

    async def _connect_error(self) -> str:
        """Why the pool has no connection: its own attempts log nothing we can show."""
        try:
            probe = await psycopg.AsyncConnection.connect(self._url, connect_timeout=5)
        except psycopg.Error as exc:
            return str(exc).strip()
        await probe.close()
        return "a new connection succeeds now"

    async def sample_backlog(self) -> tuple[int, int, int]:
        with database_errors("counting the backlog"):
            async with self._pool.connection() as connection:
                cursor = await connection.execute(queries.BACKLOG)
                row = await cursor.fetchone()
        if row is None:
            raise DatabaseUnavailable("counting the backlog: no row returned")
        return row[0], row[1], row[2]

    async def listen(self, on_notify: Callable[[float | None], None], stop: asyncio.Event) -> None:
        """Deliver NOTIFY hints (earliest new fire_at, epoch seconds) until `stop`.

        A latency optimisation only: polling stays correct without it (PgBouncer's
        transaction pooling passes no LISTEN). After every (re)connect `on_notify(None)`
        is called, since notifications sent while disconnected are lost.
        """
        backoff = Backoff(initial=0.5, maximum=RECONNECT_MAX_S)
        while not stop.is_set():
            try:
                await self._listen_once(on_notify, stop, backoff)
            except (psycopg.Error, OSError) as exc:
                delay = backoff.next()
                error = str(exc).strip()
                if error != self._listen_error:  # once per distinct error, not per retry
                    log.warning("listen_failed", error=error, retry_in_s=round(delay, 2))
                    self._listen_error = error
                await wait_for_event(stop, delay)

    async def _listen_once(
        self, on_notify: Callable[[float | None], None], stop: asyncio.Event, backoff: Backoff
    ) -> None:
        async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
            await conn.execute(queries.LISTEN)
            backoff.reset()
            self._listen_error = ""
            on_notify(None)
            while not stop.is_set():
                # Short generator runs so `stop` is seen; notifies() keeps none between runs
                # that matter: the hint after reconnect covers any gap.
                async for notify in conn.notifies(timeout=1.0):
                    on_notify(_parse_hint(notify.payload))


def _parse_hint(payload: str) -> float | None:
    try:
        return float(payload) if payload else None
    except ValueError:
        return None


async def _discard(
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]],
    connection: psycopg.AsyncConnection[Any],
) -> None:
    with contextlib.suppress(*_UNAVAILABLE):
        await connection.rollback()
    await pool.putconn(connection)


async def requeue(url: str, ids: Sequence[int] | None) -> list[int]:
    """Put dead rows (all, or those of `ids`) back in the queue; return their ids."""
    with database_errors("requeueing"):
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cursor = await conn.execute(queries.REQUEUE_DEAD, {"ids": list(ids) if ids else None})
            requeued = [job_id for (job_id,) in await cursor.fetchall()]
            await conn.execute(queries.NOTIFY_REQUEUED)
            await conn.commit()
    return requeued


async def migrate(url: str, scripts: Sequence[tuple[int, str, str]]) -> list[int]:
    """Apply the scripts not yet applied, in order; return the versions applied now.

    An advisory lock serialises replicas that start together; each script runs in
    its own transaction with its version record, so a failed one leaves nothing half done.
    """
    applied_now: list[int] = []
    with database_errors("migrating"):
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(queries.MIGRATION_LOCK)
            try:
                await conn.execute(queries.CREATE_MIGRATIONS_TABLE)
                cursor = await conn.execute(queries.APPLIED_MIGRATIONS)
                done = {version for (version,) in await cursor.fetchall()}
                for version, name, sql in scripts:
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(
                            queries.RECORD_MIGRATION, {"version": version, "name": name}
                        )
                    applied_now.append(version)
            finally:
                await conn.execute(queries.MIGRATION_UNLOCK)
    return applied_now
