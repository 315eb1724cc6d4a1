"""Recurring schedules in the database: the materialiser's pass and the CLI's commands.

The `schedules` table, its checks and triggers are in sql/0007_schedules.sql; what an
occurrence is, is decided by jobpub.scheduling (passed in through its Protocols).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final, LiteralString

import structlog
from psycopg.rows import class_row

from jobpub.db.database import Connection, Database, connect, database_errors
from jobpub.errors import DatabaseError

log = structlog.get_logger("jobpub.db.schedules")

# Schedules whose materialised occurrences end within `refill_within`: the oldest cursor
# first, SKIP LOCKED so replicas passing at once take different schedules, and
# schedules_materialise_idx (partial on enabled) so a table of idle schedules costs an
# index range scan. A schedule whose ends_at is materialised is never taken again.
LOCK_DUE_SCHEDULES: Final[LiteralString] = """
SELECT name, every, cron, timezone, starts_at, ends_at, spread, catch_up, materialised_until
FROM schedules
WHERE enabled
  AND materialised_until < now() + make_interval(secs => %(refill_within)s)
  AND (ends_at IS NULL OR materialised_until < ends_at)
ORDER BY materialised_until
LIMIT %(limit)s
FOR UPDATE OF schedules SKIP LOCKED
"""

# The transaction's clock: the materialiser plans against the same now() the claim uses.
TRANSACTION_NOW: Final[LiteralString] = "SELECT now()"

# The rows of a whole pass in one statement, through the SECURITY DEFINER function of
# version 7 (the daemon role may not INSERT into jobs directly): the i-th occurrence
# belongs to the i-th name. ON CONFLICT inside it makes a race between replicas, or a
# pass repeated after a lost commit, harmless.
MATERIALISE_OCCURRENCES: Final[LiteralString] = """
SELECT jobpub_materialise_occurrences(
    %(names)s::text[], %(occurrences)s::timestamptz[], %(fire_ats)s::timestamptz[])
"""

# Move the cursors of a pass in one statement. materialised_until is not a column the
# change trigger watches, so the rows stay.
ADVANCE_SCHEDULES: Final[LiteralString] = """
UPDATE schedules s SET materialised_until = c.materialised_until
FROM unnest(%(names)s::text[], %(materialised_until)s::timestamptz[])
     AS c (name, materialised_until)
WHERE s.name = c.name
"""

# A schedule the materialiser cannot compute ends visibly disabled with the reason; the
# change trigger drops its pending rows.
DISABLE_INVALID_SCHEDULE: Final[LiteralString] = """
UPDATE schedules SET enabled = false, disabled_reason = %(reason)s WHERE name = %(name)s
"""

# `jobpub schedule list`: every schedule by name with its next pending row, found through
# jobs_schedule_occurrence_idx (one index probe per schedule).
LIST_SCHEDULES: Final[LiteralString] = """
SELECT s.name, s.topic, s.every, s.cron, s.timezone, s.enabled, s.disabled_reason,
       (SELECT min(j.fire_at) FROM jobs j
        WHERE j.schedule_name = s.name AND NOT j.processed AND j.failed_at IS NULL)
           AS next_fire_at
FROM schedules s
ORDER BY s.name
"""

# `jobpub schedule add`: the same INSERT a user writes by hand; the table's checks and
# the time zone trigger refuse what is invalid.
ADD_SCHEDULE: Final[LiteralString] = """
INSERT INTO schedules (name, topic, payload, every, cron, timezone, qos, retain, spread,
                       expire_after, catch_up)
VALUES (%(name)s, %(topic)s, %(payload)s, %(every)s, %(cron)s, %(timezone)s, %(qos)s,
        %(retain)s, %(spread)s, %(expire_after)s, %(catch_up)s)
"""

# `jobpub schedule remove`: the delete trigger drops the occurrences not yet due.
REMOVE_SCHEDULE: Final[LiteralString] = "DELETE FROM schedules WHERE name = %(name)s"

# `jobpub schedule enable|disable`: the change trigger drops pending rows on disable and
# restarts from now on enable (no catch-up for the time it was off).
SET_SCHEDULE_ENABLED: Final[LiteralString] = """
UPDATE schedules SET enabled = %(enabled)s WHERE name = %(name)s
"""


# One schedule's rows of a pass: name, occurrences, their fire_at, the new cursor.
PlannedRows = tuple[str, Sequence[datetime], Sequence[datetime], datetime]


@dataclass(frozen=True, slots=True)
class ScheduleRecord:
    """A schedule as the materialiser reads it (jobpub.scheduling.ScheduleDefinition)."""

    name: str
    every: timedelta | None
    cron: str | None
    timezone: str
    starts_at: datetime | None
    ends_at: datetime | None
    spread: timedelta
    catch_up: str
    materialised_until: datetime


class LockedSchedules:
    """Schedules locked in one open transaction, for one materialiser pass."""

    def __init__(
        self, connection: Connection, now: datetime, schedules: list[ScheduleRecord]
    ) -> None:
        self._connection = connection
        self.now = now
        self.schedules = schedules

    async def materialise(self, planned: Sequence[PlannedRows]) -> int:
        """Insert the planned rows and move the cursors; the count of rows inserted.

        One savepoint for the pass; if the database refuses it, each schedule again in a
        savepoint of its own, and one it refuses is disabled with the reason.
        """
        try:
            return await self._insert(planned)
        except DatabaseError:
            if self._connection.closed or self._connection.broken:
                raise
        inserted = 0
        for one in planned:
            try:
                inserted += await self._insert([one])
            except DatabaseError as exc:
                if self._connection.closed or self._connection.broken:
                    raise
                log.warning("schedule_disabled", schedule=one[0], reason=str(exc))
                await self.disable(one[0], str(exc))
        return inserted

    async def _insert(self, planned: Sequence[PlannedRows]) -> int:
        names = [name for name, each, _, _ in planned for _ in each]
        occurrences = [o for _, each, _, _ in planned for o in each]
        fire_ats = [f for _, _, each, _ in planned for f in each]
        what = planned[0][0] if len(planned) == 1 else f"{len(planned)} schedules"
        with database_errors(f"materialising {what}"):
            async with self._connection.transaction():
                inserted = 0
                if names:
                    cursor = await self._connection.execute(
                        MATERIALISE_OCCURRENCES,
                        {
                            "names": names,
                            "occurrences": occurrences,
                            "fire_ats": fire_ats,
                        },
                    )
                    row = await cursor.fetchone()
                    inserted = int(row[0]) if row and row[0] is not None else 0
                await self._connection.execute(
                    ADVANCE_SCHEDULES,
                    {
                        "names": [name for name, _, _, _ in planned],
                        "materialised_until": [until for _, _, _, until in planned],
                    },
                )
        return inserted

    async def disable(self, name: str, reason: str) -> None:
        with database_errors(f"disabling schedule {name!r}"):
            await self._connection.execute(
                DISABLE_INVALID_SCHEDULE, {"name": name, "reason": reason[:1000]}
            )


class ScheduleStore:
    """The materialiser's database side (jobpub.scheduling.materializer.ScheduleStore)."""

    def __init__(self, database: Database) -> None:
        self._database = database

    @contextlib.asynccontextmanager
    async def lock_due(self, horizon: timedelta, limit: int) -> AsyncIterator[LockedSchedules]:
        """Lock schedules needing rows within half the horizon; commit on a clean exit."""
        with database_errors("materialising schedules"):
            async with self._database.connection() as connection:
                clock = await (await connection.execute(TRANSACTION_NOW)).fetchone()
                assert clock is not None  # noqa: S101 - SELECT now() returns one row
                async with connection.cursor(row_factory=class_row(ScheduleRecord)) as cursor:
                    await cursor.execute(
                        LOCK_DUE_SCHEDULES,
                        {"refill_within": horizon.total_seconds() / 2, "limit": limit},
                    )
                    schedules = await cursor.fetchall()
                yield LockedSchedules(connection, clock[0], schedules)


@dataclass(frozen=True, slots=True)
class ScheduleSummary:
    """One line of `jobpub schedule list`."""

    name: str
    topic: str
    every: timedelta | None
    cron: str | None
    timezone: str
    enabled: bool
    disabled_reason: str | None
    next_fire_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewSchedule:
    """`jobpub schedule add`: the columns a user would INSERT."""

    name: str
    topic: str
    payload: str
    every: timedelta | None = None
    cron: str | None = None
    timezone: str = "UTC"
    qos: int = 1
    retain: bool = False
    spread: timedelta = timedelta(0)
    expire_after: timedelta | None = None
    catch_up: str = "latest"


async def list_schedules(url: str) -> list[ScheduleSummary]:
    with database_errors("listing schedules"):
        async with (
            await connect(url) as conn,
            conn.cursor(row_factory=class_row(ScheduleSummary)) as cursor,
        ):
            await cursor.execute(LIST_SCHEDULES)
            return await cursor.fetchall()


async def add_schedule(url: str, schedule: NewSchedule) -> None:
    with database_errors(f"adding schedule {schedule.name!r}"):
        async with await connect(url) as conn:
            await conn.execute(
                ADD_SCHEDULE,
                {
                    "name": schedule.name,
                    "topic": schedule.topic,
                    "payload": schedule.payload,
                    "every": schedule.every,
                    "cron": schedule.cron,
                    "timezone": schedule.timezone,
                    "qos": schedule.qos,
                    "retain": schedule.retain,
                    "spread": schedule.spread,
                    "expire_after": schedule.expire_after,
                    "catch_up": schedule.catch_up,
                },
            )
            await conn.commit()


async def remove_schedule(url: str, name: str) -> bool:
    """Delete a schedule and its occurrences not yet due; False if there was none."""
    with database_errors(f"removing schedule {name!r}"):
        async with await connect(url) as conn:
            cursor = await conn.execute(REMOVE_SCHEDULE, {"name": name})
            await conn.commit()
            return cursor.rowcount > 0


async def set_schedule_enabled(url: str, name: str, *, enabled: bool) -> bool:
    """Enable or disable a schedule; False if there is none of that name."""
    with database_errors(f"{'enabling' if enabled else 'disabling'} schedule {name!r}"):
        async with await connect(url) as conn:
            cursor = await conn.execute(SET_SCHEDULE_ENABLED, {"name": name, "enabled": enabled})
            await conn.commit()
            return cursor.rowcount > 0
