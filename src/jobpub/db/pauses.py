"""Pauses by MQTT topic filter (the `pauses` table): pause, resume, list.

The claim statements read the table themselves (queries.NOT_PAUSED); these are the
operator's conveniences over plain SQL. The `_on` forms run in a connection the caller
owns (the web process's pool) and leave the commit to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import errors as pg_errors

from jobpub.db import queries
from jobpub.db.database import Connection, connect, database_errors
from jobpub.errors import JobpubError


class InvalidFilter(JobpubError):
    """Not an MQTT topic filter (refused by the table's CHECK constraint)."""


@dataclass(frozen=True, slots=True)
class Pause:
    filter: str
    age_s: float
    reason: str | None


async def pause_on(conn: Connection, topic_filter: str, reason: str | None) -> bool:
    """Pause `topic_filter` in the caller's transaction; True if it was not paused before."""
    try:
        cursor = await conn.execute(queries.PAUSE, {"filter": topic_filter, "reason": reason})
    except pg_errors.CheckViolation as exc:
        raise InvalidFilter(
            f"{topic_filter!r} is not an MQTT topic filter: levels are separated by "
            "'/', '+' fills a whole level, '#' only the last one"
        ) from exc
    row = await cursor.fetchone()
    return bool(row and row[0])


async def resume_on(conn: Connection, topic_filter: str) -> bool:
    """Resume `topic_filter` in the caller's transaction; False if it was not paused."""
    cursor = await conn.execute(queries.RESUME, {"filter": topic_filter})
    return await cursor.fetchone() is not None


async def pause(url: str, topic_filter: str, reason: str | None) -> bool:
    """Pause `topic_filter`; True if it was not paused before."""
    with database_errors("pausing"):
        async with await connect(url) as conn:
            created = await pause_on(conn, topic_filter, reason)
            await conn.commit()
    return created


async def resume(url: str, topic_filter: str) -> bool:
    """Resume `topic_filter`; False if it was not paused."""
    with database_errors("resuming"):
        async with await connect(url) as conn:
            found = await resume_on(conn, topic_filter)
            await conn.commit()
    return found


async def list_pauses(url: str) -> list[Pause]:
    with database_errors("listing pauses"):
        async with await connect(url) as conn:
            cursor = await conn.execute(queries.LIST_PAUSES)
            rows = await cursor.fetchall()
    return [Pause(row[0], row[1], row[2]) for row in rows]
