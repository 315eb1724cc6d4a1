"""The statements of `jobpub web` (REST API and dashboard), and the store that runs them.

Lists page by keyset on (fire_at, id), never OFFSET, and nothing counts a whole table:
counts are exact up to jobpub.db.stats.COUNT_CAP rows and, past it, the planner's estimate
(or "at least"), labelled so. A list by state filters on the delivery columns as the
claim reads them (published = processed; expired = processed with expired_at; dead =
failed_at set; pending = neither), so it walks a partial index in (fire_at, id) order.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, LiteralString

from psycopg import errors as pg_errors
from psycopg.rows import class_row

from jobpub.db import pauses, producer
from jobpub.db.database import Connection, Database, DatabaseConfig, database_errors
from jobpub.db.producer import REFUSED, JobConflict, JobNotFound, NewJob, Refused, first_line
from jobpub.db.stats import Stats, read_stats
from jobpub.errors import DatabaseError

# A page of the jobs whose rows match `{rows}`, in (fire_at, id) order with a keyset
# cursor; `state` is the column the version 10 trigger keeps right. A list carries the
# first 200 characters of a text payload or the first 150 bytes of a binary one, and the
# size. `{rows}` is written into each statement, not passed as a parameter, so that the
# planner matches it to the partial index that serves that state.
_PAGE_OF: Final = """
SELECT id, topic, left(payload, 200) AS payload,
       substring(payload_bytes FROM 1 FOR 150) AS payload_bytes,
       coalesce(octet_length(payload_bytes), octet_length(payload)) AS payload_size,
       qos, retain, fire_at, state, attempts, last_error, next_attempt_at, failed_at,
       processed_at, created_at, expires_at, expired_at, schedule_name, dedupe_key,
       content_type, user_properties, response_topic, correlation_data
FROM jobs
WHERE {rows}
  AND (%(topic)s::text IS NULL OR starts_with(topic, %(topic)s::text))
  AND (%(after)s::timestamptz IS NULL OR fire_at >= %(after)s::timestamptz)
  AND (%(before)s::timestamptz IS NULL OR fire_at < %(before)s::timestamptz)
  AND (%(cursor_fire_at)s::timestamptz IS NULL
       OR (fire_at, id) > (%(cursor_fire_at)s::timestamptz, %(cursor_id)s::bigint))
ORDER BY fire_at, id
LIMIT %(limit)s
"""

# Pending rows in claim order: jobs_pending_fire_at_idx (fire_at, id) serves the filter,
# the order and the keyset cursor, so a page reads `limit + 1` index entries.
LIST_PENDING_JOBS: Final[LiteralString] = _PAGE_OF.format(
    rows="NOT processed AND failed_at IS NULL"
)

# Dead rows in fire_at order, through jobs_dead_fire_at_idx (version 16).
LIST_DEAD_JOBS: Final[LiteralString] = _PAGE_OF.format(
    rows="failed_at IS NOT NULL AND NOT processed"
)

# Published rows in fire_at order, through jobs_settled_fire_at_idx (version 16): most
# of a kept table is published, so the walk skips few (dead) entries.
LIST_PUBLISHED_JOBS: Final[LiteralString] = _PAGE_OF.format(rows="processed AND expired_at IS NULL")

# Rows that expired unsent (processed, with expired_at), in fire_at order.
LIST_EXPIRED_JOBS: Final[LiteralString] = _PAGE_OF.format(
    rows="processed AND expired_at IS NOT NULL"
)

# Every row, whatever its state, in fire_at order: the first page of the pending rows
# (the claim's index) and of the settled ones (jobs_settled_fire_at_idx), merged. No
# index of every row: the claim would take it for its own on a mostly pending table and
# then walk the rows it had marked. A topic prefix filters both walks, which read more
# entries the rarer the topic is.
LIST_ALL_JOBS: Final[LiteralString] = f"""
SELECT * FROM (
    ({LIST_PENDING_JOBS})
    UNION ALL
    ({_PAGE_OF.format(rows="(processed OR failed_at IS NOT NULL)")})
) AS both_kinds
ORDER BY fire_at, id
LIMIT %(limit)s
"""

_LISTS: Final[dict[str | None, LiteralString]] = {
    "pending": LIST_PENDING_JOBS,
    "dead": LIST_DEAD_JOBS,
    "published": LIST_PUBLISHED_JOBS,
    "expired": LIST_EXPIRED_JOBS,
    None: LIST_ALL_JOBS,
}
STATES: Final = ("pending", "published", "dead", "expired")

# One job by its primary key, the whole payload.
GET_JOB: Final[LiteralString] = """
SELECT id, topic, payload, payload_bytes,
       coalesce(octet_length(payload_bytes), octet_length(payload)) AS payload_size,
       qos, retain, fire_at, state, attempts, last_error, next_attempt_at, failed_at,
       processed_at, created_at, expires_at, expired_at, schedule_name, dedupe_key,
       content_type, user_properties, response_topic, correlation_data
FROM jobs WHERE id = %(id)s
"""

# Requeue dead rows: those of `ids`, or those matching the filter, at most `limit` per
# call so one request never rewrites an unbounded number of rows. The same reset as
# `jobpub requeue` (jobpub.db.queries.REQUEUE_DEAD); NOTIFY wakes the replicas.
REQUEUE_DEAD_JOBS: Final[LiteralString] = """
UPDATE jobs SET failed_at = NULL, attempts = 0, next_attempt_at = NULL
WHERE id IN (
    SELECT id FROM jobs
    WHERE failed_at IS NOT NULL AND NOT processed
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(topic)s::text IS NULL OR starts_with(topic, %(topic)s::text))
      AND (%(failed_after)s::timestamptz IS NULL OR failed_at >= %(failed_after)s::timestamptz)
      AND (%(failed_before)s::timestamptz IS NULL OR failed_at < %(failed_before)s::timestamptz)
    ORDER BY id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""
NOTIFY_CHANGED: Final[LiteralString] = "SELECT pg_notify('jobpub_jobs', '')"

# The delivery probe's last hour (sql/0015_delivery_probes.sql): no rows when it is off.
PROBE_STATUS: Final[LiteralString] = "SELECT * FROM latest_probe_status(interval '1 hour')"

# The last hour minute by minute, from the rows themselves: published per minute and
# their worst lag (processed_at - fire_at), dead per minute, and the due backlog at the
# end of each minute. Each row is read once and lands in its minute (no row-by-bucket
# join): the backlog is a running sum of +1 when a row fell due (or at the window's
# start) and -1 when it settled. Reads the rows settled within the window through the
# retention indexes (jobs_published_processed_at_idx, jobs_dead_failed_at_idx: a range
# of each, whatever the table's size) and the pending due rows through the claim's.
# Per row, date_part (float8), not extract (numeric since PG 14): 450 against 750 ms for
# 360,000 rows settled in the hour.
HISTORY: Final[LiteralString] = """
WITH w AS (
    SELECT date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1) AS at
), settled AS (
    SELECT fire_at, coalesce(processed_at, failed_at) AS settled_at, processed,
           processed_at - fire_at AS lag
    FROM jobs
    -- w.at spelled out: known when planning, so the planner sees a minute's rows and
    -- takes the two indexes' ranges (from w, it guessed a third of the table)
    WHERE (processed AND processed_at >= date_trunc('minute', now())
                                         - make_interval(mins => %(minutes)s - 1))
       OR (failed_at >= date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1)
           AND NOT processed)
), changes AS (
    SELECT greatest(0, floor(date_part('epoch', fire_at - w.at) / 60))::int AS minute,
           1 AS delta
    FROM settled, w WHERE fire_at <= settled_at
    UNION ALL
    SELECT floor(date_part('epoch', settled_at - w.at) / 60)::int, -1
    FROM settled, w WHERE fire_at <= settled_at
    UNION ALL
    SELECT greatest(0, floor(date_part('epoch', fire_at - w.at) / 60))::int, 1
    FROM jobs, w
    WHERE NOT processed AND failed_at IS NULL AND fire_at <= now()
), per_minute AS (
    SELECT floor(date_part('epoch', settled_at - w.at) / 60)::int AS minute,
           count(*) FILTER (WHERE processed) AS published,
           extract(epoch FROM max(lag) FILTER (WHERE processed))::float8 AS max_lag_s,
           count(*) FILTER (WHERE NOT processed) AS dead
    FROM settled, w
    GROUP BY 1
), backlog AS (
    SELECT minute, sum(delta) AS delta FROM changes GROUP BY minute
)
SELECT w.at + make_interval(mins => m.minute) AS minute_start,
       coalesce(p.published, 0) AS published, p.max_lag_s, coalesce(p.dead, 0) AS dead,
       (sum(coalesce(b.delta, 0)) OVER (ORDER BY m.minute))::bigint AS due_backlog
FROM generate_series(0, %(minutes)s - 1) AS m (minute)
CROSS JOIN w
LEFT JOIN per_minute p ON p.minute = m.minute
LEFT JOIN backlog b ON b.minute = m.minute
ORDER BY m.minute
"""


# For this transaction only. The planner overestimates HISTORY's rows by far (due rows:
# 350,000 guessed, 1,000 there, on a 10M-row table) and past PG's jit_above_cost it
# compiled the statement: 1.6 s of a 1.7 s answer, where the rows took 40 ms to read.
NO_JIT: Final[LiteralString] = "SET LOCAL jit = off"


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A row of `jobs` as the API shows it (in a list, the start of the payload)."""

    id: int
    topic: str
    payload: str
    payload_bytes: bytes | None  # a binary payload, published instead of `payload`
    payload_size: int  # bytes, of whichever payload is published
    qos: int
    retain: bool
    fire_at: datetime
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime | None
    failed_at: datetime | None
    processed_at: datetime | None
    created_at: datetime
    expires_at: datetime | None
    expired_at: datetime | None
    schedule_name: str | None
    dedupe_key: str | None
    content_type: str | None
    user_properties: Any  # JSON: an object of strings, unless the row is settled (unchecked)
    response_topic: str | None
    correlation_data: bytes | None


@dataclass(frozen=True, slots=True)
class JobFilter:
    state: str | None = None
    topic: str | None = None  # a topic prefix
    after: datetime | None = None  # fire_at at or after
    before: datetime | None = None  # fire_at before
    limit: int = 50
    cursor: tuple[datetime, int] | None = None  # the last (fire_at, id) already shown


@dataclass(frozen=True, slots=True)
class JobPage:
    jobs: list[JobRecord]
    next_cursor: tuple[datetime, int] | None


@dataclass(frozen=True, slots=True)
class DeadFilter:
    ids: list[int] | None = None
    topic: str | None = None
    failed_after: datetime | None = None
    failed_before: datetime | None = None
    limit: int = 10_000


@dataclass(frozen=True, slots=True)
class ProbeStatus:
    """The delivery probe over the last hour (JOBPUB_PROBE_TOPIC; all empty when off)."""

    last_fire_at: datetime | None
    last_received_at: datetime | None
    last_latency_s: float | None
    received: int
    missing: int


@dataclass(frozen=True, slots=True)
class MinuteStats:
    minute_start: datetime
    published: int
    max_lag_s: float | None
    dead: int
    due_backlog: int


class PauseNotFound(DatabaseError):
    """No pause has that filter."""


class ScheduleNotFound(DatabaseError):
    """No schedule has that name."""


class ScheduleConflict(DatabaseError):
    """A schedule of that name exists already."""


# Whether the job jobpub.db.producer.add_job answered was inserted by this transaction
# (its created_at is the default, now()) or is the kept row holding its dedupe key.
JOB_ADDED_NOW: Final[LiteralString] = "SELECT created_at = now() FROM jobs WHERE id = %(id)s"

# The pauses (few rows), oldest first, with when each began.
LIST_PAUSES_DETAILED: Final[LiteralString] = """
SELECT filter, reason, created_at AS paused_at,
       extract(epoch FROM now() - created_at)::float8 AS paused_for_s
FROM pauses
WHERE %(filter)s::text IS NULL OR filter = %(filter)s::text
ORDER BY created_at, filter
"""

# The replicas' rows with their heartbeat's age by the database clock. A row older than
# JOBPUB_REPLICA_STALE_AFTER is a replica gone without a clean stop: live replicas delete
# such rows (queries.BEAT_REPLICA), so one stays listed only while no replica runs. Live
# is that statement's bound too, as `jobpub stats` counts (jobpub.db.stats.FLEET).
LIST_REPLICAS: Final[LiteralString] = """
SELECT id::text AS id, host, version, partition, started_at, heartbeat_at,
       extract(epoch FROM now() - heartbeat_at)::float8 AS heartbeat_age_s,
       heartbeat_at >= now() - make_interval(secs => %(stale_after)s) AS live
FROM jobpub_replicas
ORDER BY host, started_at, id
"""

# The overview's pause count: a small table (one row per paused filter).
COUNT_PAUSES: Final[LiteralString] = "SELECT count(*) FROM pauses"


@dataclass(frozen=True, slots=True)
class PauseRecord:
    filter: str
    reason: str | None
    paused_at: datetime
    paused_for_s: float


@dataclass(frozen=True, slots=True)
class ReplicaRow:
    id: str
    host: str
    version: str
    partition: str  # "index/count" of the static partition
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_age_s: float
    live: bool  # heartbeat within JOBPUB_REPLICA_STALE_AFTER


@dataclass(frozen=True, slots=True)
class Fleet:
    """What the overview and /api/stats show of the fleet: no count of the jobs table."""

    pauses: int  # filters paused
    replicas: list[ReplicaRow]

    @property
    def live_replicas(self) -> int:
        return sum(replica.live for replica in self.replicas)


# One schedule, or all, with the next pending row (jobs_schedule_occurrence_idx).
LIST_SCHEDULES_DETAILED: Final[LiteralString] = """
SELECT s.name, s.topic, s.payload, s.every, s.cron, s.timezone, s.qos, s.retain,
       s.starts_at, s.ends_at, s.enabled, s.spread, s.expire_after, s.catch_up,
       s.disabled_reason, s.materialised_until, s.created_at, s.updated_at,
       (SELECT min(j.fire_at) FROM jobs j
        WHERE j.schedule_name = s.name AND NOT j.processed AND j.failed_at IS NULL)
           AS next_fire_at
FROM schedules s
WHERE %(name)s::text IS NULL OR s.name = %(name)s::text
ORDER BY s.name
"""

# Create a schedule: the INSERT a user writes by hand; checks and triggers refuse
# what is invalid, the primary key a second schedule of the same name.
CREATE_SCHEDULE: Final[LiteralString] = """
INSERT INTO schedules (name, topic, payload, every, cron, timezone, qos, retain,
                       starts_at, ends_at, enabled, spread, expire_after, catch_up)
VALUES (%(name)s, %(topic)s, %(payload)s, %(every)s, %(cron)s, %(timezone)s, %(qos)s,
        %(retain)s, %(starts_at)s, %(ends_at)s, %(enabled)s, %(spread)s,
        %(expire_after)s, %(catch_up)s)
"""

# Change some fields of a schedule: `set_<field>` says whether a field was given, so a
# nullable one can be cleared; every and cron replace each other. The change trigger
# (version 7) drops its occurrences not yet due and restarts from now.
UPDATE_SCHEDULE: Final[LiteralString] = """
UPDATE schedules SET
    topic = CASE WHEN %(set_topic)s THEN %(topic)s ELSE topic END,
    payload = CASE WHEN %(set_payload)s THEN %(payload)s ELSE payload END,
    every = CASE WHEN %(set_every)s THEN %(every)s::interval
                 WHEN %(set_cron)s THEN NULL ELSE every END,
    cron = CASE WHEN %(set_cron)s THEN %(cron)s::text
                WHEN %(set_every)s THEN NULL ELSE cron END,
    timezone = CASE WHEN %(set_timezone)s THEN %(timezone)s ELSE timezone END,
    qos = CASE WHEN %(set_qos)s THEN %(qos)s::smallint ELSE qos END,
    retain = CASE WHEN %(set_retain)s THEN %(retain)s::boolean ELSE retain END,
    starts_at = CASE WHEN %(set_starts_at)s THEN %(starts_at)s::timestamptz ELSE starts_at END,
    ends_at = CASE WHEN %(set_ends_at)s THEN %(ends_at)s::timestamptz ELSE ends_at END,
    enabled = CASE WHEN %(set_enabled)s THEN %(enabled)s::boolean ELSE enabled END,
    spread = CASE WHEN %(set_spread)s THEN %(spread)s::interval ELSE spread END,
    expire_after = CASE WHEN %(set_expire_after)s THEN %(expire_after)s::interval
                        ELSE expire_after END,
    catch_up = CASE WHEN %(set_catch_up)s THEN %(catch_up)s ELSE catch_up END
WHERE name = %(name)s
"""

# Delete a schedule; its trigger drops the occurrences not yet due.
DELETE_SCHEDULE: Final[LiteralString] = "DELETE FROM schedules WHERE name = %(name)s"

SCHEDULE_FIELDS: Final = (
    "topic", "payload", "every", "cron", "timezone", "qos", "retain", "starts_at",
    "ends_at", "enabled", "spread", "expire_after", "catch_up",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ScheduleDetail:
    """A schedule as the API shows it (also a jobpub.scheduling.ScheduleDefinition)."""

    name: str
    topic: str
    payload: str
    every: timedelta | None
    cron: str | None
    timezone: str
    qos: int
    retain: bool
    starts_at: datetime | None
    ends_at: datetime | None
    enabled: bool
    spread: timedelta
    expire_after: timedelta | None
    catch_up: str
    disabled_reason: str | None
    materialised_until: datetime
    created_at: datetime
    updated_at: datetime
    next_fire_at: datetime | None


@contextlib.contextmanager
def _refusals(action: str) -> Iterator[None]:
    """A constraint the values broke is the caller's to fix (Refused, its first line)."""
    try:
        yield
    except pg_errors.UniqueViolation as exc:
        raise ScheduleConflict(f"{action}: {first_line(exc)}") from exc
    except REFUSED as exc:
        raise Refused(first_line(exc)) from exc


class WebStore:
    """The web process's database side: its own small pool, every statement above."""

    def __init__(self, url: str, pool_size: int = 4, statement_timeout: float = 30.0) -> None:
        # hold_timeout bounds each statement and open transaction of a request too.
        self._database = Database(
            DatabaseConfig(url=url, pool_size=pool_size, hold_timeout=statement_timeout)
        )

    async def open(self) -> None:
        await self._database.open()

    async def close(self) -> None:
        await self._database.close()

    async def check(self) -> None:
        """Return if the database answers; DatabaseUnavailable if not (/healthz)."""
        await self._database.check()

    @contextlib.asynccontextmanager
    async def _connection(self, action: str) -> AsyncIterator[Connection]:
        with database_errors(action):
            async with self._database.connection() as connection:
                # Unprepared: each request's parameters plan afresh, so a filter left
                # NULL folds away and the partial index is chosen for the values given.
                connection.prepare_threshold = None
                with _refusals(action):
                    yield connection

    async def list_jobs(self, wanted: JobFilter) -> JobPage:
        statement = _LISTS[wanted.state]
        params = {
            "topic": wanted.topic,
            "after": wanted.after,
            "before": wanted.before,
            "cursor_fire_at": wanted.cursor[0] if wanted.cursor else None,
            "cursor_id": wanted.cursor[1] if wanted.cursor else None,
            "limit": wanted.limit + 1,  # one more says whether there is a next page
        }
        async with (
            self._connection("listing jobs") as connection,
            connection.cursor(row_factory=class_row(JobRecord)) as cursor,
        ):
            await cursor.execute(statement, params)
            rows = await cursor.fetchall()
        page = rows[: wanted.limit]
        more = len(rows) > wanted.limit
        return JobPage(page, (page[-1].fire_at, page[-1].id) if more and page else None)

    async def get_job(self, job_id: int) -> JobRecord:
        async with (
            self._connection(f"reading job {job_id}") as connection,
            connection.cursor(row_factory=class_row(JobRecord)) as cursor,
        ):
            await cursor.execute(GET_JOB, {"id": job_id})
            job = await cursor.fetchone()
        if job is None:
            raise JobNotFound(f"no job has id {job_id}")
        return job

    async def add_job(self, job: NewJob) -> tuple[JobRecord, bool]:
        """The job added, or the kept job holding its dedupe key; True if it was added."""
        async with self._connection("adding a job") as connection:
            job_id = await producer.add_job(connection, job)
            row = await (await connection.execute(JOB_ADDED_NOW, {"id": job_id})).fetchone()
        return await self.get_job(job_id), bool(row and row[0])

    async def reschedule_job(
        self, job_id: int, fire_at: datetime | None, delay: float
    ) -> JobRecord:
        async with self._connection(f"rescheduling job {job_id}") as connection:
            await producer.reschedule_job(connection, job_id, fire_at, delay)
        return await self.get_job(job_id)

    async def cancel_job(self, job_id: int) -> None:
        async with self._connection(f"cancelling job {job_id}") as connection:
            await producer.cancel_job(connection, job_id)

    async def requeue_dead(self, wanted: DeadFilter) -> list[int]:
        params = {
            "ids": wanted.ids,
            "topic": wanted.topic,
            "failed_after": wanted.failed_after,
            "failed_before": wanted.failed_before,
            "limit": wanted.limit,
        }
        async with self._connection("requeueing dead jobs") as connection:
            cursor = await connection.execute(REQUEUE_DEAD_JOBS, params)
            requeued = sorted(int(job_id) for (job_id,) in await cursor.fetchall())
            if requeued:
                await connection.execute(NOTIFY_CHANGED)
        return requeued

    async def requeue_job(self, job_id: int) -> JobRecord:
        if not await self.requeue_dead(DeadFilter(ids=[job_id], limit=1)):
            job = await self.get_job(job_id)  # JobNotFound if there is none
            raise JobConflict(
                f"job {job_id} is {job.state}, not dead: only dead jobs are requeued", job.state
            )
        return await self.get_job(job_id)

    async def stats(self) -> Stats:
        async with self._connection("reading stats") as connection:
            return await read_stats(connection)

    async def probe_status(self) -> ProbeStatus:
        async with (
            self._connection("reading the delivery probe") as connection,
            connection.cursor(row_factory=class_row(ProbeStatus)) as cursor,
        ):
            await cursor.execute(PROBE_STATUS)
            status = await cursor.fetchone()
        assert status is not None  # noqa: S101 - the function returns one row
        return status

    async def fleet(self, replica_stale_after: float) -> Fleet:
        """How many filters are paused and every replica's row, from one transaction."""
        async with self._connection("reading the fleet") as connection:
            row = await (await connection.execute(COUNT_PAUSES)).fetchone()
            assert row is not None  # noqa: S101 - a count returns one row
            async with connection.cursor(row_factory=class_row(ReplicaRow)) as cursor:
                await cursor.execute(LIST_REPLICAS, {"stale_after": replica_stale_after})
                replicas = await cursor.fetchall()
        return Fleet(pauses=int(row[0]), replicas=replicas)

    async def history(self, minutes: int = 60) -> list[MinuteStats]:
        async with (
            self._connection("reading the last hour") as connection,
            connection.cursor(row_factory=class_row(MinuteStats)) as cursor,
        ):
            await cursor.execute(NO_JIT)
            await cursor.execute(HISTORY, {"minutes": minutes})
            return await cursor.fetchall()

    async def list_schedules(self, name: str | None = None) -> list[ScheduleDetail]:
        async with (
            self._connection("listing schedules") as connection,
            connection.cursor(row_factory=class_row(ScheduleDetail)) as cursor,
        ):
            await cursor.execute(LIST_SCHEDULES_DETAILED, {"name": name})
            return await cursor.fetchall()

    async def get_schedule(self, name: str) -> ScheduleDetail:
        found = await self.list_schedules(name)
        if not found:
            raise ScheduleNotFound(f"no schedule is named {name!r}")
        return found[0]

    async def create_schedule(self, values: dict[str, Any]) -> ScheduleDetail:
        async with self._connection(f"adding schedule {values['name']!r}") as connection:
            await connection.execute(CREATE_SCHEDULE, values)
        return await self.get_schedule(values["name"])

    async def update_schedule(self, name: str, change: dict[str, Any]) -> ScheduleDetail:
        params: dict[str, Any] = {"name": name}
        for column in SCHEDULE_FIELDS:
            params[f"set_{column}"] = column in change
            params[column] = change.get(column)
        async with self._connection(f"changing schedule {name!r}") as connection:
            cursor = await connection.execute(UPDATE_SCHEDULE, params)
            if cursor.rowcount == 0:
                raise ScheduleNotFound(f"no schedule is named {name!r}")
        return await self.get_schedule(name)

    async def delete_schedule(self, name: str) -> None:
        async with self._connection(f"deleting schedule {name!r}") as connection:
            cursor = await connection.execute(DELETE_SCHEDULE, {"name": name})
            if cursor.rowcount == 0:
                raise ScheduleNotFound(f"no schedule is named {name!r}")

    async def list_pauses(self, topic_filter: str | None = None) -> list[PauseRecord]:
        async with (
            self._connection("listing pauses") as connection,
            connection.cursor(row_factory=class_row(PauseRecord)) as cursor,
        ):
            await cursor.execute(LIST_PAUSES_DETAILED, {"filter": topic_filter})
            return await cursor.fetchall()

    async def get_pause(self, topic_filter: str) -> PauseRecord:
        found = await self.list_pauses(topic_filter)
        if not found:
            raise PauseNotFound(f"{topic_filter!r} is not paused")
        return found[0]

    async def pause(self, topic_filter: str, reason: str | None) -> tuple[PauseRecord, bool]:
        """Pause a filter (InvalidFilter if it is not one); True if it was not paused yet."""
        async with self._connection(f"pausing {topic_filter!r}") as connection:
            created = await pauses.pause_on(connection, topic_filter, reason)
        return await self.get_pause(topic_filter), created

    async def resume(self, topic_filter: str) -> None:
        """Resume a filter; PauseNotFound if it was not paused."""
        async with self._connection(f"resuming {topic_filter!r}") as connection:
            if not await pauses.resume_on(connection, topic_filter):
                raise PauseNotFound(f"{topic_filter!r} is not paused")

    async def list_replicas(self, replica_stale_after: float) -> list[ReplicaRow]:
        async with (
            self._connection("listing replicas") as connection,
            connection.cursor(row_factory=class_row(ReplicaRow)) as cursor,
        ):
            await cursor.execute(LIST_REPLICAS, {"stale_after": replica_stale_after})
            return await cursor.fetchall()
