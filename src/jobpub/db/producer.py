"""Add, cancel and reschedule jobs on a connection the caller owns, sync or async.

The one implementation behind `jobpub.client` (the producer API), the REST API's
POST/PATCH/DELETE of jobs (jobpub.db.web) and `jobpub add|cancel|reschedule`. Nothing
here commits: the statements run in the caller's transaction, which decides.

Each operation is its statements (constants below) plus two halves that neither block
nor await (parameters in, an answer or an exception out), so the sync and async
versions differ only in `await`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, LiteralString

import psycopg
from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from jobpub.db.database import database_errors
from jobpub.errors import DatabaseError

# The connection types the caller passes; jobpub.client names them from here, since only
# jobpub.db may import psycopg.
SyncConnection = psycopg.Connection[Any]
AsyncConnection = psycopg.AsyncConnection[Any]

# The seed's INSERT with every optional column. fire_at and expires_at come from the
# database clock when given as a delay, so "in 30 s" means 30 s by the clock the claim
# judges due by (now(): the transaction's start). A NULL delay leaves expires_at NULL.
# ON CONFLICT (dedupe_key) infers jobs_dedupe_key_idx; a row without a key never
# conflicts, and a conflict returns no row (the caller then reads the existing one).
ADD_JOB: Final[LiteralString] = """
INSERT INTO jobs (topic, payload, payload_bytes, fire_at, qos, retain, expires_at,
                  dedupe_key, content_type, user_properties, response_topic,
                  correlation_data)
VALUES (%(topic)s, %(payload)s, %(payload_bytes)s,
        coalesce(%(fire_at)s::timestamptz, now() + make_interval(secs => %(delay)s)),
        %(qos)s, %(retain)s,
        coalesce(%(expires_at)s::timestamptz,
                 now() + make_interval(secs => %(expires_in)s::float8)),
        %(dedupe_key)s, %(content_type)s, %(user_properties)s, %(response_topic)s,
        %(correlation_data)s)
ON CONFLICT (dedupe_key) DO NOTHING
RETURNING id
"""

# The row holding a dedupe key, found through jobs_dedupe_key_idx. A statement of its
# own after ADD_JOB: the INSERT waited for a concurrent holder of the key to commit, and
# only a new statement's snapshot (READ COMMITTED) sees that row.
DEDUPED_JOB: Final[LiteralString] = "SELECT id FROM jobs WHERE dedupe_key = %(dedupe_key)s"

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
# (a row lock test that waits for nothing). An expired row reads 'published', as the
# REST API has always answered: it left the queue.
JOB_CONFLICT: Final[LiteralString] = """
SELECT CASE WHEN processed THEN 'published' WHEN failed_at IS NOT NULL THEN 'dead'
            ELSE 'pending' END AS state
FROM jobs WHERE id = %(id)s
"""


@dataclass(frozen=True, slots=True)
class NewJob:
    """A row to insert. Times: `fire_at`, or `delay` seconds from the database's now()."""

    topic: str
    payload: str | bytes = ""  # bytes go in payload_bytes (published as they are)
    fire_at: datetime | None = None
    delay: float = 0.0
    qos: int = 1
    retain: bool = False
    expires_at: datetime | None = None  # or `expires_in` seconds from the database's now()
    expires_in: float | None = None
    dedupe_key: str | None = None
    content_type: str | None = None
    user_properties: Mapping[str, str] | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None


class JobNotFound(DatabaseError):
    """No job has that id."""


class JobConflict(DatabaseError):
    """The job is not in a state that allows the change (settled, or being published)."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


class Refused(DatabaseError):
    """The database's checks refused the values (a constraint or trigger): the caller's to fix."""


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


def _conflict(job_id: int, row: tuple[Any, ...] | None, verb: str) -> DatabaseError:
    """Why a pending-only change touched nothing, as the exception to raise."""
    if row is None:
        return JobNotFound(f"no job has id {job_id}")
    state = str(row[0])
    if state == "pending":
        return JobConflict(f"job {job_id} is being published right now and cannot be {verb}", state)
    return JobConflict(f"job {job_id} is {state}, no longer pending: not {verb}", state)


def _vanished(key: str) -> DatabaseError:
    # The row holding the key went (cancelled, pruned) between the two statements.
    return DatabaseError(f"adding a job: the row with dedupe key {key!r} was just deleted; retry")


# Async, for the REST API and `jobpub` commands (and jobpub.client's *_async functions).


async def add_job(connection: AsyncConnection, job: NewJob) -> int:
    """Insert `job`; its id, or with a dedupe key already taken, the id of the key's row."""
    with _translated("adding a job"):
        row = await (await connection.execute(ADD_JOB, _add_params(job))).fetchone()
        if row is None and job.dedupe_key is not None:
            params = {"dedupe_key": job.dedupe_key}
            row = await (await connection.execute(DEDUPED_JOB, params)).fetchone()
            if row is None:
                raise _vanished(job.dedupe_key)
    assert row is not None  # noqa: S101 - without a key, INSERT … RETURNING returns the row
    return int(row[0])


async def reschedule_job(
    connection: AsyncConnection, job_id: int, fire_at: datetime | None, delay: float
) -> None:
    """Move a pending job to `fire_at` (or `delay` s from now()); JobNotFound, JobConflict."""
    params = {"id": job_id, "fire_at": fire_at, "delay": delay}
    with _translated(f"rescheduling job {job_id}"):
        if await (await connection.execute(RESCHEDULE_JOB, params)).fetchone() is None:
            found = await (await connection.execute(JOB_CONFLICT, {"id": job_id})).fetchone()
            raise _conflict(job_id, found, "rescheduled")


async def cancel_job(connection: AsyncConnection, job_id: int) -> None:
    """Delete a pending job; JobNotFound, or JobConflict when it is not pending."""
    with _translated(f"cancelling job {job_id}"):
        if await (await connection.execute(CANCEL_JOB, {"id": job_id})).fetchone() is None:
            found = await (await connection.execute(JOB_CONFLICT, {"id": job_id})).fetchone()
            raise _conflict(job_id, found, "cancelled")


# Sync: the same statements and halves on a blocking connection.


def add_job_sync(connection: SyncConnection, job: NewJob) -> int:
    """Insert `job`; its id, or with a dedupe key already taken, the id of the key's row."""
    with _translated("adding a job"):
        row = connection.execute(ADD_JOB, _add_params(job)).fetchone()
        if row is None and job.dedupe_key is not None:
            row = connection.execute(DEDUPED_JOB, {"dedupe_key": job.dedupe_key}).fetchone()
            if row is None:
                raise _vanished(job.dedupe_key)
    assert row is not None  # noqa: S101 - without a key, INSERT … RETURNING returns the row
    return int(row[0])


def reschedule_job_sync(
    connection: SyncConnection, job_id: int, fire_at: datetime | None, delay: float
) -> None:
    """Move a pending job to `fire_at` (or `delay` s from now()); JobNotFound, JobConflict."""
    params = {"id": job_id, "fire_at": fire_at, "delay": delay}
    with _translated(f"rescheduling job {job_id}"):
        if connection.execute(RESCHEDULE_JOB, params).fetchone() is None:
            found = connection.execute(JOB_CONFLICT, {"id": job_id}).fetchone()
            raise _conflict(job_id, found, "rescheduled")


def cancel_job_sync(connection: SyncConnection, job_id: int) -> None:
    """Delete a pending job; JobNotFound, or JobConflict when it is not pending."""
    with _translated(f"cancelling job {job_id}"):
        if connection.execute(CANCEL_JOB, {"id": job_id}).fetchone() is None:
            found = connection.execute(JOB_CONFLICT, {"id": job_id}).fetchone()
            raise _conflict(job_id, found, "cancelled")
