"""The producer API: add, cancel and reschedule jobs from Python (docs/client.md).

Every function takes a psycopg connection the caller owns, `psycopg.Connection` for the
plain functions and `psycopg.AsyncConnection` for the `*_async` ones, and runs its
statements in the caller's transaction: nothing here commits. Commit when the job
should exist (an `add` beside the business rows it belongs to is committed with them,
or not at all); on an autocommit connection each call is committed as it returns.

    with psycopg.connect(url) as conn:  # committed when the block ends without error
        job_id = jobpub.client.add(conn, "devices/7/valve", '{"open": true}',
                                   delay=timedelta(minutes=5), qos=1)

Errors: `JobNotFound` (no such id), `JobConflict` (the job is no longer pending, or
another transaction holds it locked; its `state` says which), neither of which leaves
the transaction aborted; `Refused` (the database refused the values: roll back);
`DatabaseUnavailable` and `DatabaseError` for the rest. Arguments wrong before any SQL
runs raise ValueError or TypeError.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from jobpub.db import producer
from jobpub.db.producer import (
    AsyncConnection,
    JobConflict,
    JobNotFound,
    JobState,
    NewJob,
    Refused,
    SyncConnection,
    expires_first_message,
)
from jobpub.errors import DatabaseError, DatabaseUnavailable

__all__ = [
    "AsyncConnection",
    "DatabaseError",
    "DatabaseUnavailable",
    "JobConflict",
    "JobNotFound",
    "JobState",
    "NewJob",
    "Properties",
    "Refused",
    "SyncConnection",
    "add",
    "add_async",
    "cancel",
    "cancel_async",
    "new_job",
    "reschedule",
    "reschedule_async",
]


@dataclass(frozen=True, slots=True)
class Properties:
    """MQTT 5 properties published with the message (dropped on an MQTT 3.1.1 connection).

    `user_properties` are string pairs (a JSON object of strings in the row); the job id
    is always sent as the user property `jobpub-job-id` besides them.
    """

    content_type: str | None = None
    user_properties: Mapping[str, str] | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None


def _seconds(span: timedelta | float, name: str) -> float:
    """Seconds, finite: NaN or an infinity would reach SQL as an interval out of range."""
    seconds = span.total_seconds() if isinstance(span, timedelta) else float(span)
    if not math.isfinite(seconds):
        raise ValueError(f"{name} must be a finite number of seconds, got {seconds}")
    return seconds


def _when(
    at: datetime | None, delay: timedelta | float | None, what: str
) -> tuple[datetime | None, float]:
    """(fire_at, delay seconds) as the statements take them; ValueError for a bad pair."""
    if at is not None and delay is not None:
        raise ValueError(f"{what}: give `at` or `delay`, not both")
    if at is not None:
        return _aware(at, "at"), 0.0
    seconds = _seconds(delay, f"{what}: delay") if delay is not None else 0.0
    if seconds < 0:
        raise ValueError(f"{what}: delay must not be negative, got {seconds:g} s")
    return None, seconds


def _aware(moment: datetime, name: str) -> datetime:
    # A naive datetime would be read in the session's TimeZone: refused, not guessed.
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must carry a time zone (e.g. datetime.now(UTC)), got {moment}")
    return moment


def _expiry(
    fire_at: datetime | None, expires_at: datetime | None, expires_in: timedelta | float | None
) -> tuple[datetime | None, float | None]:
    """(expires_at, expires_in seconds) as the statement takes them. A job that would expire
    before it fires is refused here when both times are known, by the statement otherwise."""
    if expires_at is not None and expires_in is not None:
        raise ValueError("add: give `expires_at` or `expires_in`, not both")
    if expires_in is not None:
        seconds = _seconds(expires_in, "add: expires_in")
        if seconds <= 0:
            raise ValueError(
                f"add: expires_in must be positive (after the firing time), got {seconds:g} s"
            )
        return None, seconds
    if expires_at is None:
        return None, None
    expires_at = _aware(expires_at, "expires_at")
    if fire_at is not None and expires_at <= fire_at:
        raise ValueError(f"add: {expires_first_message(fire_at, expires_at)}")
    return expires_at, None


def new_job(
    topic: str,
    payload: str | bytes = "",
    *,
    at: datetime | None = None,
    delay: timedelta | float | None = None,
    qos: int = 1,
    retain: bool = False,
    expires_at: datetime | None = None,
    expires_in: timedelta | float | None = None,
    dedupe_key: str | None = None,
    properties: Properties | None = None,
) -> NewJob:
    """The row `add` inserts, its arguments checked (ValueError, TypeError); no SQL."""
    if not isinstance(payload, str | bytes):
        raise TypeError(f"payload must be str or bytes, not {type(payload).__name__}")
    if qos not in (0, 1, 2):
        raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
    fire_at, delay_s = _when(at, delay, "add")
    expires_at, expires_in_s = _expiry(fire_at, expires_at, expires_in)
    props = properties or Properties()
    user_properties = props.user_properties
    if user_properties is not None:
        wrong = [
            key
            for key, value in user_properties.items()
            if not (isinstance(key, str) and isinstance(value, str))
        ]
        if wrong:
            raise ValueError(f"user_properties must map strings to strings: {wrong[:5]!r}")
    return NewJob(
        topic=topic,
        payload=payload,
        fire_at=fire_at,
        delay=delay_s,
        qos=qos,
        retain=retain,
        expires_at=expires_at,
        expires_in=expires_in_s,
        dedupe_key=dedupe_key,
        content_type=props.content_type,
        user_properties=user_properties,
        response_topic=props.response_topic,
        correlation_data=props.correlation_data,
    )


def add(
    conn: SyncConnection,
    topic: str,
    payload: str | bytes = "",
    *,
    at: datetime | None = None,
    delay: timedelta | float | None = None,
    qos: int = 1,
    retain: bool = False,
    expires_at: datetime | None = None,
    expires_in: timedelta | float | None = None,
    dedupe_key: str | None = None,
    properties: Properties | None = None,
) -> int:
    """Add a job in the caller's transaction and return its id.

    When: `at` (a datetime with a time zone) or `delay` (a timedelta or seconds) from
    the database's clock as this call's statement runs; neither means now. A `str`
    payload is published as UTF-8 text, `bytes` as they are. `expires_at`, or
    `expires_in` after the firing time: a job not published by then ends `expired` and
    is never sent; one that would expire before it fires is refused (ValueError when
    `at` and `expires_at` tell it, Refused from the database otherwise).

    `dedupe_key`: if a job with this key is kept in the table (whatever its state, until
    retention deletes it), nothing is inserted and that job's id is returned, so a
    producer's retry returns the same id as its first attempt. The first row's values
    stand; the retry's are not compared.
    """
    job = new_job(
        topic, payload, at=at, delay=delay, qos=qos, retain=retain, expires_at=expires_at,
        expires_in=expires_in, dedupe_key=dedupe_key, properties=properties,
    )  # fmt: skip
    return producer.add_job_sync(conn, job)


async def add_async(
    conn: AsyncConnection,
    topic: str,
    payload: str | bytes = "",
    *,
    at: datetime | None = None,
    delay: timedelta | float | None = None,
    qos: int = 1,
    retain: bool = False,
    expires_at: datetime | None = None,
    expires_in: timedelta | float | None = None,
    dedupe_key: str | None = None,
    properties: Properties | None = None,
) -> int:
    """`add` on an asyncio connection: the same arguments, the same answer."""
    job = new_job(
        topic, payload, at=at, delay=delay, qos=qos, retain=retain, expires_at=expires_at,
        expires_in=expires_in, dedupe_key=dedupe_key, properties=properties,
    )  # fmt: skip
    return await producer.add_job(conn, job)


def cancel(conn: SyncConnection, job_id: int) -> None:
    """Delete a pending job in the caller's transaction.

    JobNotFound if there is no such job; JobConflict if it is published, dead, expired,
    or locked by another transaction (a replica publishing it, or another writer): never
    waits for the lock.
    """
    producer.cancel_job_sync(conn, job_id)


async def cancel_async(conn: AsyncConnection, job_id: int) -> None:
    """`cancel` on an asyncio connection."""
    await producer.cancel_job(conn, job_id)


def reschedule(
    conn: SyncConnection,
    job_id: int,
    *,
    at: datetime | None = None,
    delay: timedelta | float | None = None,
) -> None:
    """Move a pending job to `at`, or `delay` from the database's clock as the statement
    runs, in the caller's transaction; a retry's backoff is dropped with it. Errors as for
    `cancel`."""
    fire_at, delay_s = _rescheduled(at, delay)
    producer.reschedule_job_sync(conn, job_id, fire_at, delay_s)


async def reschedule_async(
    conn: AsyncConnection,
    job_id: int,
    *,
    at: datetime | None = None,
    delay: timedelta | float | None = None,
) -> None:
    """`reschedule` on an asyncio connection."""
    fire_at, delay_s = _rescheduled(at, delay)
    await producer.reschedule_job(conn, job_id, fire_at, delay_s)


def _rescheduled(
    at: datetime | None, delay: timedelta | float | None
) -> tuple[datetime | None, float]:
    if at is None and delay is None:
        raise ValueError("reschedule: give `at` or `delay`")
    return _when(at, delay, "reschedule")
