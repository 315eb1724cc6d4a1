"""The materialiser: turn schedules' coming occurrences into jobs rows, ahead of time.

Every replica runs one (a named task of jobpub.app). A pass locks a batch of schedules
whose horizon has room (SKIP LOCKED, so replicas share them), plans each one's
occurrences (jobpub.scheduling.occurrences) and inserts one row per occurrence; the
unique (schedule_name, occurrence_at) index keeps an occurrence one row whatever races.
The rows are then published by the normal claim, at their fire_at, never early.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

import structlog

from jobpub.errors import DatabaseError
from jobpub.scheduling.occurrences import InvalidSchedule, ScheduleDefinition, plan
from jobpub.waiting import wait_for_event

log = structlog.get_logger("jobpub.scheduling")


class DueSchedules(Protocol):
    """Schedules locked for one pass (jobpub.db.schedules.LockedSchedules)."""

    @property
    def now(self) -> datetime:
        """The database clock at the start of the pass."""

    @property
    def schedules(self) -> Sequence[ScheduleDefinition]: ...

    async def materialise(
        self, planned: Sequence[tuple[str, Sequence[datetime], Sequence[datetime], datetime]]
    ) -> int:
        """Insert each schedule's (name, occurrences, fire_ats, new cursor) in one go;
        the count of rows inserted. A schedule whose rows the database refuses is
        disabled with the reason; raises DatabaseError when the database fails."""

    async def disable(self, name: str, reason: str) -> None: ...


class ScheduleStore(Protocol):
    def lock_due(self, horizon: timedelta, limit: int) -> AbstractAsyncContextManager[DueSchedules]:
        """Lock up to `limit` schedules whose rows end within half the horizon; commit on exit."""


@dataclass(frozen=True, slots=True)
class MaterializerConfig:
    # Occurrences are materialised this far ahead: visible and cancellable as rows.
    horizon: timedelta
    # Seconds between passes when nothing is left to do.
    interval: float
    # Schedules per pass (one transaction), and occurrences per schedule per pass.
    batch_size: int = 500
    occurrences_per_pass: int = 1000


class Materializer:
    def __init__(self, store: ScheduleStore, config: MaterializerConfig) -> None:
        self._store = store
        self._config = config

    async def run(self, stop: asyncio.Event) -> None:
        """Pass after pass until `stop`; a failing pass is logged, never fatal."""
        failing: str | None = None  # said once until a pass succeeds, not every pass
        while not stop.is_set():
            try:
                full = await self.materialise_once()
            except DatabaseError as exc:
                if str(exc) != failing:
                    log.warning("schedules_materialise_failed", error=str(exc))
                failing, full = str(exc), False
            else:
                if failing is not None:
                    log.info("schedules_materialise_recovered")
                failing = None
            if not full:
                await wait_for_event(stop, self._config.interval)
            else:
                await asyncio.sleep(0)  # more to do: go on, but let the relay run

    async def materialise_once(self) -> bool:
        """One pass; True if the batch was full (more schedules may be waiting)."""
        config = self._config
        async with self._store.lock_due(config.horizon, config.batch_size) as due:
            planned = []
            for schedule in due.schedules:
                try:
                    rows = plan(schedule, due.now, config.horizon, config.occurrences_per_pass)
                except InvalidSchedule as exc:
                    log.warning("schedule_disabled", schedule=schedule.name, reason=str(exc))
                    await due.disable(schedule.name, str(exc))
                    continue
                planned.append(
                    (schedule.name, rows.occurrences, rows.fire_ats, rows.materialised_until)
                )
            inserted = await due.materialise(planned) if planned else 0
            count = len(due.schedules)
        if inserted:
            log.debug("schedules_materialised", schedules=count, rows=inserted)
        return count >= config.batch_size
