"""Add, cancel and reschedule jobs on a connection the caller owns, sync or async.

The one implementation behind `jobpub.client` (the producer API), the REST API's
POST/PATCH/DELETE of jobs (jobpub.db.web) and `jobpub add|cancel|reschedule`. Nothing
here commits: the statements run in the caller's transaction, which decides.

Each operation is a generator of steps (a statement and its parameters out, the row it
returned back in) that neither blocks nor awaits; `_run` and `_run_sync` drive it on an
async or a blocking connection, so the two differ only in `await`. They read rows as
tuples on a cursor of their own, whatever row factory the caller's connection has.
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal, LiteralString, TypeVar, cast, get_args

import psycopg
from psycopg import errors as pg_errors
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb

from jobpub.db.database import database_errors
from jobpub.errors import DatabaseError

# The connection types the caller passes; jobpub.client names them from here, since only
# jobpub.db may import psycopg.
SyncConnection = psycopg.Connection[Any]
AsyncConnection = psycopg.AsyncConnection[Any]

# What the `state` column holds (jobpub_job_state, sql/0010_job_columns.sql).
JobState = Literal["pending", "published", "dead", "expired"]
JOB_STATES: Final[tuple[JobState, ...]] = get_args(JobState)

# The seed's INSERT with every optional column. fire_at and expires_at come from the
# database clock when given as a delay: statement_timestamp(), the time this statement
# began, so "in 30 s" means 30 s from the add however long the caller's transaction has
# been open (the claim judges due by its own transaction's now(), a fresh one each
# batch). `expires_in` counts from fire_at, as a schedule's expire_after counts from its
# occurrence; a NULL one leaves expires_at NULL. A row that would expire before it fires
# is not inserted: the statement answers `expires_first` and the caller refuses it (plain
# SQL cannot raise a message of its own without a function in the schema).
# ON CONFLICT (dedupe_key) infers jobs_dedupe_key_idx; a row without a key never
# conflicts, and a conflict inserts nothing (the caller then reads the existing row).
ADD_JOB: Final[LiteralString] = """
WITH timed AS (
    SELECT fire_at,
           coalesce(%(expires_at)s::timestamptz,
                    fire_at + make_interval(secs => %(expires_in)s::float8)) AS expires_at
    FROM (SELECT coalesce(%(fire_at)s::timestamptz,
                          statement_timestamp() + make_interval(secs => %(delay)s::float8))
                 AS fire_at) AS fired
), added AS (
    INSERT INTO jobs (topic, payload, payload_bytes, fire_at, qos, retain, expires_at,
                      dedupe_key, content_type, user_properties, response_topic,
                      correlation_data)
    SELECT %(topic)s, %(payload)s, %(payload_bytes)s, fire_at, %(qos)s, %(retain)s,
           expires_at, %(dedupe_key)s, %(content_type)s, %(user_properties)s,
           %(response_topic)s, %(correlation_data)s
    FROM timed
    WHERE NOT coalesce(expires_at <= fire_at, false)
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING id
)
SELECT (SELECT id FROM added) AS id, coalesce(expires_at <= fire_at, false) AS expires_first,
       fire_at, expires_at
FROM timed
"""

# The row holding a dedupe key, found through jobs_dedupe_key_idx. A statement of its
# own after ADD_JOB: the INSERT waited for a concurrent holder of the key to commit, and
# only a new statement's snapshot (READ COMMITTED) sees that row.
DEDUPED_JOB: Final[LiteralString] = "SELECT id FROM jobs WHERE dedupe_key = %(dedupe_key)s"

# Reschedule a pending row, `delay` from this statement's time as in ADD_JOB. SKIP
# LOCKED: a row another transaction holds (a replica publishing it, or another writer)
# is a conflict at once, not a wait for the broker's ack. The fire_at update trigger
# wakes the replicas; a retry's backoff is dropped with the new time.
RESCHEDULE_JOB: Final[LiteralString] = """
UPDATE jobs
SET fire_at = coalesce(%(fire_at)s::timestamptz,
                       statement_timestamp() + make_interval(secs => %(delay)s::float8)),
    next_attempt_at = NULL
WHERE id = (SELECT id FROM jobs
            WHERE id = %(id)s AND NOT processed AND failed_at IS NULL
            FOR UPDATE SKIP LOCKED)
RETURNING id
"""

# Cancel a pending row: delete it, unless another transaction holds it (as above).
CANCEL_JOB: Final[LiteralString] = """
DELETE FROM jobs
WHERE id = (SELECT id FROM jobs
            WHERE id = %(id)s AND NOT processed AND failed_at IS NULL
            FOR UPDATE SKIP LOCKED)
RETURNING id
"""

# Why a reschedule or cancel touched nothing: no such row, settled (the maintained
# `state` column: published, dead or expired), or pending and locked (a read that waits
# for no lock).
JOB_CONFLICT: Final[LiteralString] = "SELECT state FROM jobs WHERE id = %(id)s"


@dataclass(frozen=True, slots=True)
class NewJob:
    """A row to insert. Times: `fire_at`, or `delay` seconds from the statement's time."""

    topic: str
    payload: str | bytes = ""  # bytes go in payload_bytes (published as they are)
    fire_at: datetime | None = None
    delay: float = 0.0
    qos: int = 1
    retain: bool = False
    expires_at: datetime | None = None  # or `expires_in` seconds after fire_at
    expires_in: float | None = None
    dedupe_key: str | None = None
    content_type: str | None = None
    user_properties: Mapping[str, str] | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Added:
    """What `insert_job` did: the job's id, and whether its dedupe key was taken (then
    `id` is the existing row's and nothing was inserted)."""

    id: int
    deduplicated: bool


class JobNotFound(DatabaseError):
    """No job has that id."""


class JobConflict(DatabaseError):
    """The job is not in a state that allows the change (settled, or locked by another
    transaction: then `state` is 'pending')."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state: JobState = job_state(state)


class Refused(DatabaseError):
    """The database refused the values (a constraint, a trigger, or an expiry not after
    the firing time): the caller's to fix."""


def job_state(text: str) -> JobState:
    """`text` as a JobState; ValueError for anything the state column never holds."""
    for state in JOB_STATES:
        if text == state:
            return state
    raise ValueError(f"not a job state: {text!r} (one of {', '.join(JOB_STATES)})")


def expires_first_message(fire_at: datetime, expires_at: datetime) -> str:
    """Why a job whose expiry is not after its firing time is refused (here and before SQL)."""
    return (
        f"the job would expire before it is published: expires_at {expires_at.isoformat()}"
        f" is not after its firing time {fire_at.isoformat()}"
    )


# What a constraint or a type refuses: the values are wrong, retrying will not help.
REFUSED = (
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


def first_line(exc: psycopg.Error) -> str:
    """The server's message (and hint) on one line, for a user who broke a constraint."""
    diag = exc.diag
    message = (diag.message_primary or str(exc)).strip().splitlines()[0]
    return f"{message} ({diag.message_hint})" if diag.message_hint else message


@contextlib.contextmanager
def _translated(action: str) -> Iterator[None]:
    """jobpub's errors out, never psycopg's: Refused for values a check refused."""
    with database_errors(action):
        try:
            yield
        except REFUSED as exc:
            raise Refused(first_line(exc)) from exc
        except pg_errors.LockNotAvailable as exc:
            # Only a session with a lock_timeout (`jobpub add` sets one) gets here: the
            # INSERT waits for an uncommitted row holding the same dedupe key.
            raise DatabaseError(
                f"{action}: gave up waiting for a lock another transaction holds (lock"
                " timeout): a transaction that added the same dedupe key has not ended"
            ) from exc


# The steps of an operation: it yields (statement, parameters), is sent the row the
# statement returned (None: no row), and returns its answer.
Step = tuple[LiteralString, dict[str, Any]]
Row = tuple[Any, ...] | None
T = TypeVar("T")
Steps = Generator[Step, Row, T]


def _adding(job: NewJob) -> Steps[Added]:
    row = yield ADD_JOB, _add_params(job)
    assert row is not None  # noqa: S101 - a SELECT over the one-row CTE returns one row
    job_id, expires_first, fire_at, expires_at = row
    if expires_first:
        raise Refused(expires_first_message(fire_at, expires_at))
    if job_id is not None:
        return Added(int(job_id), deduplicated=False)
    # Only a taken dedupe key inserts nothing: a row without a key never conflicts.
    assert job.dedupe_key is not None  # noqa: S101
    found = yield DEDUPED_JOB, {"dedupe_key": job.dedupe_key}
    if found is None:
        # The row holding the key went (cancelled, pruned) between the two statements.
        raise DatabaseError(
            f"adding a job: the row with dedupe key {job.dedupe_key!r} was just deleted; retry"
        )
    return Added(int(found[0]), deduplicated=True)


def _changing(statement: LiteralString, params: dict[str, Any], verb: str) -> Steps[None]:
    """A change of a pending row (RESCHEDULE_JOB, CANCEL_JOB); why not, when it touched none."""
    job_id = params["id"]
    if (yield statement, params) is not None:
        return
    found = yield JOB_CONFLICT, {"id": job_id}
    if found is None:
        raise JobNotFound(f"no job has id {job_id}")
    state = job_state(str(found[0]))
    if state == "pending":
        raise JobConflict(
            f"job {job_id} is locked by another transaction (a replica publishing it, or"
            f" another writer) and cannot be {verb}",
            state,
        )
    raise JobConflict(f"job {job_id} is {state}, no longer pending: not {verb}", state)


def _add_params(job: NewJob) -> dict[str, Any]:
    binary = isinstance(job.payload, bytes)
    return {
        "topic": job.topic,
        "payload": "" if binary else job.payload,
        "payload_bytes": job.payload if binary else None,
        "fire_at": job.fire_at,
        "delay": job.delay,
        "qos": job.qos,
        "retain": job.retain,
        "expires_at": job.expires_at,
        "expires_in": job.expires_in,
        "dedupe_key": job.dedupe_key,
        "content_type": job.content_type,
        "user_properties": Jsonb(dict(job.user_properties))
        if job.user_properties is not None
        else None,
        "response_topic": job.response_topic,
        "correlation_data": job.correlation_data,
    }


def _rescheduling(job_id: int, fire_at: datetime | None, delay: float) -> Steps[None]:
    params = {"id": job_id, "fire_at": fire_at, "delay": delay}
    return _changing(RESCHEDULE_JOB, params, "rescheduled")


def _cancelling(job_id: int) -> Steps[None]:
    return _changing(CANCEL_JOB, {"id": job_id}, "cancelled")


# The drivers: the same loop, one awaiting and one blocking.


async def _run(
    connection: AsyncConnection,
    action: str,
    steps: Steps[T],
) -> T:
    with _translated(action):
        async with connection.cursor(row_factory=tuple_row) as cursor:
            step = next(steps)
            while True:
                await cursor.execute(*step)
                try:
                    step = steps.send(await cursor.fetchone())
                except StopIteration as done:
                    return cast(T, done.value)


def _run_sync(
    connection: SyncConnection,
    action: str,
    steps: Steps[T],
) -> T:
    with _translated(action), connection.cursor(row_factory=tuple_row) as cursor:
        step = next(steps)
        while True:
            cursor.execute(*step)
            try:
                step = steps.send(cursor.fetchone())
            except StopIteration as done:
                return cast(T, done.value)


# Async, for the REST API and `jobpub` commands (and jobpub.client's *_async functions).


async def insert_job(connection: AsyncConnection, job: NewJob) -> Added:
    """Insert `job`, or with its dedupe key taken, find the key's row."""
    return await _run(connection, "adding a job", _adding(job))


async def add_job(connection: AsyncConnection, job: NewJob) -> int:
    """Insert `job`; its id, or with a dedupe key already taken, the id of the key's row."""
    return (await insert_job(connection, job)).id


async def reschedule_job(
    connection: AsyncConnection, job_id: int, fire_at: datetime | None, delay: float
) -> None:
    """Move a pending job to `fire_at` (or `delay` s from now); JobNotFound, JobConflict."""
    await _run(connection, f"rescheduling job {job_id}", _rescheduling(job_id, fire_at, delay))


async def cancel_job(connection: AsyncConnection, job_id: int) -> None:
    """Delete a pending job; JobNotFound, or JobConflict when it is not pending."""
    await _run(connection, f"cancelling job {job_id}", _cancelling(job_id))


# Sync: the same steps on a blocking connection.


def add_job_sync(connection: SyncConnection, job: NewJob) -> int:
    """Insert `job`; its id, or with a dedupe key already taken, the id of the key's row."""
    return _run_sync(connection, "adding a job", _adding(job)).id


def reschedule_job_sync(
    connection: SyncConnection, job_id: int, fire_at: datetime | None, delay: float
) -> None:
    """Move a pending job to `fire_at` (or `delay` s from now); JobNotFound, JobConflict."""
    _run_sync(connection, f"rescheduling job {job_id}", _rescheduling(job_id, fire_at, delay))


def cancel_job_sync(connection: SyncConnection, job_id: int) -> None:
    """Delete a pending job; JobNotFound, or JobConflict when it is not pending."""
    _run_sync(connection, f"cancelling job {job_id}", _cancelling(job_id))
