"""The statements of `jobpub web` (REST API and dashboard), and the store that runs them.

Lists page by keyset on (fire_at, id), never OFFSET, and nothing counts a whole table:
counts are exact up to COUNT_CAP rows and labelled as the planner's estimate (or "at
least") beyond; the published count is always an estimate. A state is derived from the
delivery columns as the claim reads them (published = processed; dead = failed_at set;
pending = neither).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal, LiteralString

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import class_row, dict_row

from jobpub.db.database import Connection, Database, DatabaseConfig, database_errors
from jobpub.errors import DatabaseError

# A count reads at most this many index entries (1-2 ms); past it the API gives the
# planner's estimate, labelled so, or says "at least".
COUNT_CAP: Final = 10_000

# The columns every job answer carries, with the state derived as the claim sees it.
# Each list statement below repeats them whole.

# Pending rows in claim order: jobs_pending_fire_at_idx (fire_at, id) serves the filter,
# the order and the keyset cursor, so a page reads `limit + 1` index entries.
LIST_PENDING_JOBS: Final[LiteralString] = """
SELECT id, topic, left(payload, 200) AS payload, qos, retain, fire_at,
       'pending' AS state, attempts, last_error, next_attempt_at, failed_at,
       processed_at, created_at, expires_at, schedule_name
FROM jobs
WHERE NOT processed AND failed_at IS NULL
  AND (%(topic)s::text IS NULL OR starts_with(topic, %(topic)s::text))
  AND (%(after)s::timestamptz IS NULL OR fire_at >= %(after)s::timestamptz)
  AND (%(before)s::timestamptz IS NULL OR fire_at < %(before)s::timestamptz)
  AND (%(cursor_fire_at)s::timestamptz IS NULL
       OR (fire_at, id) > (%(cursor_fire_at)s::timestamptz, %(cursor_id)s::bigint))
ORDER BY fire_at, id
LIMIT %(limit)s
"""

# Dead rows in fire_at order, through jobs_dead_fire_at_idx (version 16).
LIST_DEAD_JOBS: Final[LiteralString] = """
SELECT id, topic, left(payload, 200) AS payload, qos, retain, fire_at,
       'dead' AS state, attempts, last_error, next_attempt_at, failed_at,
       processed_at, created_at, expires_at, schedule_name
FROM jobs
WHERE failed_at IS NOT NULL AND NOT processed
  AND (%(topic)s::text IS NULL OR starts_with(topic, %(topic)s::text))
  AND (%(after)s::timestamptz IS NULL OR fire_at >= %(after)s::timestamptz)
  AND (%(before)s::timestamptz IS NULL OR fire_at < %(before)s::timestamptz)
  AND (%(cursor_fire_at)s::timestamptz IS NULL
       OR (fire_at, id) > (%(cursor_fire_at)s::timestamptz, %(cursor_id)s::bigint))
ORDER BY fire_at, id
LIMIT %(limit)s
"""

# Published rows in fire_at order (the same keyset as the other states), through
# jobs_settled_fire_at_idx (version 16): most of a kept table is published, so the walk
# skips few (dead) entries.
LIST_PUBLISHED_JOBS: Final[LiteralString] = """
SELECT id, topic, left(payload, 200) AS payload, qos, retain, fire_at,
       'published' AS state, attempts, last_error, next_attempt_at, failed_at,
       processed_at, created_at, expires_at, schedule_name
FROM jobs
WHERE processed
  AND (%(topic)s::text IS NULL OR starts_with(topic, %(topic)s::text))
  AND (%(after)s::timestamptz IS NULL OR fire_at >= %(after)s::timestamptz)
  AND (%(before)s::timestamptz IS NULL OR fire_at < %(before)s::timestamptz)
  AND (%(cursor_fire_at)s::timestamptz IS NULL
       OR (fire_at, id) > (%(cursor_fire_at)s::timestamptz, %(cursor_id)s::bigint))
ORDER BY fire_at, id
LIMIT %(limit)s
"""

# Every row, whatever its state, in fire_at order: the first page of the pending rows
# (the claim's index) and of the settled ones (jobs_settled_fire_at_idx), merged. No
# index of every row: the claim would take it for its own on a mostly pending table and
# then walk the rows it had marked. A topic prefix filters both walks, which read more
# entries the rarer the topic is.
LIST_ALL_JOBS: Final[LiteralString] = """
SELECT * FROM (
    (SELECT id, topic, left(payload, 200) AS payload, qos, retain, fire_at,
            'pending' AS state, attempts, last_error, next_attempt_at, failed_at,
            processed_at, created_at, expires_at, schedule_name
     FROM jobs
     WHERE NOT processed AND failed_at IS NULL
       AND (%(topic)s::text IS NULL OR starts_with(topic, %(topic)s::text))
       AND (%(after)s::timestamptz IS NULL OR fire_at >= %(after)s::timestamptz)
       AND (%(before)s::timestamptz IS NULL OR fire_at < %(before)s::timestamptz)
       AND (%(cursor_fire_at)s::timestamptz IS NULL
            OR (fire_at, id) > (%(cursor_fire_at)s::timestamptz, %(cursor_id)s::bigint))
     ORDER BY fire_at, id
     LIMIT %(limit)s)
    UNION ALL
    (SELECT id, topic, left(payload, 200) AS payload, qos, retain, fire_at,
            CASE WHEN processed THEN 'published' ELSE 'dead' END AS state,
            attempts, last_error, next_attempt_at, failed_at,
            processed_at, created_at, expires_at, schedule_name
     FROM jobs
     WHERE (processed OR failed_at IS NOT NULL)
       AND (%(topic)s::text IS NULL OR starts_with(topic, %(topic)s::text))
       AND (%(after)s::timestamptz IS NULL OR fire_at >= %(after)s::timestamptz)
       AND (%(before)s::timestamptz IS NULL OR fire_at < %(before)s::timestamptz)
       AND (%(cursor_fire_at)s::timestamptz IS NULL
            OR (fire_at, id) > (%(cursor_fire_at)s::timestamptz, %(cursor_id)s::bigint))
     ORDER BY fire_at, id
     LIMIT %(limit)s)
) AS both_kinds
ORDER BY fire_at, id
LIMIT %(limit)s
"""

_LISTS: Final[dict[str | None, LiteralString]] = {
    "pending": LIST_PENDING_JOBS,
    "dead": LIST_DEAD_JOBS,
    "published": LIST_PUBLISHED_JOBS,
    None: LIST_ALL_JOBS,
}
STATES: Final = ("pending", "published", "dead")

# One job by its primary key, the whole payload.
GET_JOB: Final[LiteralString] = """
SELECT id, topic, payload, qos, retain, fire_at,
       CASE WHEN processed THEN 'published' WHEN failed_at IS NOT NULL THEN 'dead'
            ELSE 'pending' END AS state,
       attempts, last_error, next_attempt_at, failed_at,
       processed_at, created_at, expires_at, schedule_name
FROM jobs WHERE id = %(id)s
"""

# The seed's INSERT with the optional delivery columns; fire_at from the database clock
# when a delay is given, so "in 30 s" means 30 s by the clock the claim judges due by.
ADD_JOB: Final[LiteralString] = """
INSERT INTO jobs (topic, payload, fire_at, qos, retain)
VALUES (%(topic)s, %(payload)s,
        coalesce(%(fire_at)s::timestamptz, now() + make_interval(secs => %(delay)s)),
        %(qos)s, %(retain)s)
RETURNING id
"""

# Reschedule a pending row. SKIP LOCKED: a row a replica holds is being published now,
# and the answer is a conflict at once, not a wait for the broker's ack. The fire_at
# update trigger wakes the replicas; a retry's backoff is dropped with the new time.
RESCHEDULE_JOB: Final[LiteralString] = """
UPDATE jobs
SET fire_at = coalesce(%(fire_at)s::timestamptz, now() + make_interval(secs => %(delay)s)),
    next_attempt_at = NULL
WHERE id = (SELECT id FROM jobs
            WHERE id = %(id)s AND NOT processed AND failed_at IS NULL
            FOR UPDATE SKIP LOCKED)
RETURNING id
"""

# Cancel a pending row: delete it, unless a replica holds it (SKIP LOCKED, as above).
CANCEL_JOB: Final[LiteralString] = """
DELETE FROM jobs
WHERE id = (SELECT id FROM jobs
            WHERE id = %(id)s AND NOT processed AND failed_at IS NULL
            FOR UPDATE SKIP LOCKED)
RETURNING id
"""

# Why a reschedule or cancel touched nothing: no such row, settled, or held by a replica
# (a row lock test that waits for nothing).
JOB_CONFLICT: Final[LiteralString] = """
SELECT CASE WHEN processed THEN 'published' WHEN failed_at IS NOT NULL THEN 'dead'
            ELSE 'pending' END AS state
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

# The overview's numbers in one round trip, none of which reads the table's bulk: each
# count walks a small partial index (pending: jobs_pending_fire_at_idx; dead:
# jobs_dead_failed_at_idx) and stops at the cap; the oldest due row is the pending
# index's first entry. Sizes are the planner's own estimate: tuples per page at the last
# VACUUM or ANALYZE times the pages now (so a table that grew since is sized as it is),
# NULL for a relation never analysed. 10M rows: 1-3 ms (docs/performance.md).
STATS: Final[LiteralString] = """
WITH sizes AS (
    SELECT relname,
           CASE WHEN reltuples < 0 THEN NULL
                WHEN relpages = 0 THEN reltuples
                ELSE reltuples / relpages
                     * (pg_relation_size(oid) / current_setting('block_size')::int)
           END AS estimate
    FROM pg_class
    WHERE oid IN (to_regclass('jobs'), to_regclass('jobs_pending_fire_at_idx'),
                  to_regclass('jobs_dead_failed_at_idx'))
)
SELECT
    (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE NOT processed AND failed_at IS NULL
                           LIMIT %(cap)s) AS capped) AS pending,
    (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE NOT processed AND failed_at IS NULL
                             AND fire_at <= now() LIMIT %(cap)s) AS capped) AS due,
    (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE failed_at IS NOT NULL AND NOT processed
                           LIMIT %(cap)s) AS capped) AS dead,
    (SELECT extract(epoch FROM now() - fire_at)::float8 FROM jobs
     WHERE NOT processed AND failed_at IS NULL AND fire_at <= now()
     ORDER BY fire_at, id LIMIT 1) AS oldest_due_age_s,
    (SELECT estimate::bigint FROM sizes WHERE relname = 'jobs') AS total_estimate,
    (SELECT estimate::bigint FROM sizes
     WHERE relname = 'jobs_pending_fire_at_idx') AS pending_estimate,
    (SELECT estimate::bigint FROM sizes
     WHERE relname = 'jobs_dead_failed_at_idx') AS dead_estimate,
    (SELECT count(*) FROM schedules) AS schedules,
    (SELECT count(*) FROM schedules WHERE enabled) AS schedules_enabled,
    rate.published AS rate_published, rate.oldest AS rate_oldest,
    date_trunc('minute', now()) - make_interval(mins => %(rate_minutes)s) AS rate_start,
    date_trunc('minute', now()) AS rate_end,
    now() AS measured_at
FROM (
    -- The publish rate over the last complete minutes: the newest published rows there,
    -- backwards through jobs_published_processed_at_idx, at most the cap of them (when
    -- there are more, the rate is over the time they span).
    SELECT count(*) AS published, min(processed_at) AS oldest
    FROM (SELECT processed_at FROM jobs
          WHERE processed
            AND processed_at >= date_trunc('minute', now())
                                - make_interval(mins => %(rate_minutes)s)
            AND processed_at < date_trunc('minute', now())
          ORDER BY processed_at DESC
          LIMIT %(cap)s) AS newest
) AS rate
"""

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
    """A row of `jobs` as the API shows it (the list's payload is its first 200 chars)."""

    id: int
    topic: str
    payload: str
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
    schedule_name: str | None


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
class NewJob:
    topic: str
    payload: str = ""
    fire_at: datetime | None = None  # or `delay` seconds from the database's now()
    delay: float = 0.0
    qos: int = 1
    retain: bool = False


@dataclass(frozen=True, slots=True)
class DeadFilter:
    ids: list[int] | None = None
    topic: str | None = None
    failed_after: datetime | None = None
    failed_before: datetime | None = None
    limit: int = 10_000


# How a count was made: counted; counting stopped at COUNT_CAP; the planner's estimate
# (from the statistics of the last VACUUM or ANALYZE, scaled to the relation's size now).
CountKind = Literal["exact", "at_least", "estimate"]
EXACT: Final = "exact"
AT_LEAST: Final = "at_least"
ESTIMATE: Final = "estimate"


@dataclass(frozen=True, slots=True)
class Count:
    value: int
    kind: CountKind = EXACT

    @property
    def exact(self) -> bool:
        return self.kind == EXACT


def count_of(counted: int, estimate: int | None, *, cap: int = COUNT_CAP) -> Count:
    """A count that stopped at `cap`, told apart from a complete one. Past the cap, the
    planner's estimate when there is one and it is larger; else "at least the cap"."""
    if counted < cap:
        return Count(counted)
    if estimate is not None and estimate > counted:
        return Count(estimate, ESTIMATE)
    return Count(counted, AT_LEAST)


def publish_rate(
    published: int,
    oldest: datetime | None,
    start: datetime,
    end: datetime,
    *,
    cap: int = COUNT_CAP,
) -> tuple[float, float]:
    """(per second, over how many seconds): `published` rows in [start, end), or, when
    counting stopped at `cap`, the cap over the time from the oldest counted to `end`."""
    window = (end - start).total_seconds()
    if published >= cap and oldest is not None:
        window = max((end - oldest).total_seconds(), 0.001)
    return (published / window if window > 0 else 0.0), window


def published_estimate(total: int | None, pending: Count, dead: Count) -> Count:
    """Published (and expired) rows: the table's estimated size less the unsettled ones,
    never below zero; an estimate whatever the others are (0 before the first ANALYZE)."""
    return Count(max(0, (total or 0) - pending.value - dead.value), ESTIMATE)


@dataclass(frozen=True, slots=True)
class Stats:
    pending: Count
    due: Count
    dead: Count
    published: Count  # the table's estimated size less pending and dead: an estimate
    oldest_due_age_s: float | None
    published_per_s: float
    rate_window_s: float  # the time the rate is over
    schedules: int
    schedules_enabled: int
    measured_at: datetime


@dataclass(frozen=True, slots=True)
class MinuteStats:
    minute_start: datetime
    published: int
    max_lag_s: float | None
    dead: int
    due_backlog: int


class JobNotFound(DatabaseError):
    """No job has that id."""


class JobConflict(DatabaseError):
    """The job is not in a state that allows the change (settled, or being published)."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


class ScheduleNotFound(DatabaseError):
    """No schedule has that name."""


class ScheduleConflict(DatabaseError):
    """A schedule of that name exists already."""


class Refused(DatabaseError):
    """The database's checks refused the values (a constraint or trigger): the caller's to fix."""


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


_REFUSED = (
    pg_errors.CheckViolation,
    pg_errors.NotNullViolation,
    pg_errors.InvalidTextRepresentation,
    pg_errors.InvalidDatetimeFormat,
    pg_errors.DatetimeFieldOverflow,
    pg_errors.IntervalFieldOverflow,
    pg_errors.NumericValueOutOfRange,
    pg_errors.StringDataRightTruncation,
    pg_errors.CharacterNotInRepertoire,
    pg_errors.UntranslatableCharacter,
)


@contextlib.contextmanager
def _refusals(action: str) -> Iterator[None]:
    """A constraint the values broke is the caller's to fix (Refused, its first line)."""
    try:
        yield
    except pg_errors.UniqueViolation as exc:
        raise ScheduleConflict(f"{action}: {_first_line(exc)}") from exc
    except _REFUSED as exc:
        raise Refused(_first_line(exc)) from exc


def _first_line(exc: psycopg.Error) -> str:
    diag = exc.diag
    message = (diag.message_primary or str(exc)).strip().splitlines()[0]
    return f"{message} ({diag.message_hint})" if diag.message_hint else message


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

    async def add_job(self, job: NewJob) -> JobRecord:
        params = {
            "topic": job.topic,
            "payload": job.payload,
            "fire_at": job.fire_at,
            "delay": job.delay,
            "qos": job.qos,
            "retain": job.retain,
        }
        async with self._connection("adding a job") as connection:
            row = await (await connection.execute(ADD_JOB, params)).fetchone()
        assert row is not None  # noqa: S101 - INSERT … RETURNING returns the row
        return await self.get_job(int(row[0]))

    async def reschedule_job(
        self, job_id: int, fire_at: datetime | None, delay: float
    ) -> JobRecord:
        params = {"id": job_id, "fire_at": fire_at, "delay": delay}
        async with self._connection(f"rescheduling job {job_id}") as connection:
            row = await (await connection.execute(RESCHEDULE_JOB, params)).fetchone()
            if row is None:
                await self._raise_conflict(connection, job_id, "rescheduled")
        return await self.get_job(job_id)

    async def cancel_job(self, job_id: int) -> None:
        async with self._connection(f"cancelling job {job_id}") as connection:
            row = await (await connection.execute(CANCEL_JOB, {"id": job_id})).fetchone()
            if row is None:
                await self._raise_conflict(connection, job_id, "cancelled")

    async def _raise_conflict(self, connection: Connection, job_id: int, verb: str) -> None:
        row = await (await connection.execute(JOB_CONFLICT, {"id": job_id})).fetchone()
        if row is None:
            raise JobNotFound(f"no job has id {job_id}")
        state = str(row[0])
        if state == "pending":
            raise JobConflict(
                f"job {job_id} is being published right now and cannot be {verb}", state
            )
        raise JobConflict(f"job {job_id} is {state}, no longer pending: not {verb}", state)

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

    async def stats(self, rate_minutes: int = 5) -> Stats:
        async with (
            self._connection("reading stats") as connection,
            connection.cursor(row_factory=dict_row) as cursor,
        ):
            await cursor.execute(STATS, {"cap": COUNT_CAP, "rate_minutes": rate_minutes})
            row = await cursor.fetchone()
        assert row is not None  # noqa: S101 - a SELECT without FROM returns one row

        pending = count_of(int(row["pending"]), row["pending_estimate"])
        dead = count_of(int(row["dead"]), row["dead_estimate"])
        per_s, window_s = publish_rate(
            int(row["rate_published"]), row["rate_oldest"], row["rate_start"], row["rate_end"]
        )
        return Stats(
            pending=pending,
            due=count_of(int(row["due"]), None),  # due rows have no index of their own
            dead=dead,
            published=published_estimate(row["total_estimate"], pending, dead),
            oldest_due_age_s=row["oldest_due_age_s"],
            published_per_s=per_s,
            rate_window_s=window_s,
            schedules=int(row["schedules"]),
            schedules_enabled=int(row["schedules_enabled"]),
            measured_at=row["measured_at"],
        )

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
