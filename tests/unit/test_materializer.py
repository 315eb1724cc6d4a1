"""The materialiser's loop on a fake ScheduleStore: failures never end it, said once."""

from __future__ import annotations

import asyncio
import contextlib
import io
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog

from jobpub import logs
from jobpub.errors import DatabaseError
from jobpub.scheduling.materializer import Materializer, MaterializerConfig
from jobpub.scheduling.occurrences import ScheduleDefinition
from testbed.waiting import eventually

NOW = datetime(2026, 1, 1, 12, tzinfo=UTC)


@dataclass(frozen=True)
class Definition:
    name: str
    cron: str | None = None
    every: timedelta | None = None
    timezone: str = "UTC"
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    spread: timedelta = timedelta(0)
    catch_up: str = "latest"
    materialised_until: datetime = NOW


@dataclass
class FakeDue:
    now: datetime
    schedules: Sequence[ScheduleDefinition]
    planned: list[tuple[str, Sequence[datetime], Sequence[datetime], datetime]] = field(
        default_factory=list
    )
    disabled: dict[str, str] = field(default_factory=dict)

    async def materialise(
        self, planned: Sequence[tuple[str, Sequence[datetime], Sequence[datetime], datetime]]
    ) -> int:
        self.planned.extend(planned)
        return sum(len(occurrences) for _, occurrences, _, _ in planned)

    async def disable(self, name: str, reason: str) -> None:
        self.disabled[name] = reason


@dataclass
class FakeStore:
    schedules: list[ScheduleDefinition]
    failures: int = 0
    passes: list[FakeDue] = field(default_factory=list)

    @contextlib.asynccontextmanager
    async def lock_due(self, horizon: timedelta, limit: int) -> AsyncIterator[FakeDue]:
        if self.failures:
            self.failures -= 1
            raise DatabaseError("materialising schedules: permission denied for table schedules")
        due = FakeDue(NOW, self.schedules[:limit])
        self.passes.append(due)
        yield due


async def test_an_invalid_cron_is_disabled_and_the_others_planned() -> None:
    store = FakeStore([Definition("bad", cron="61 * * * *"), Definition("ok", cron="* * * * *")])
    config = MaterializerConfig(timedelta(seconds=60), interval=0.01)
    full = await Materializer(store, config).materialise_once()
    assert not full
    (due,) = store.passes
    assert "invalid cron expression" in due.disabled["bad"]
    ((name, occurrences, fire_ats, until),) = due.planned
    assert name == "ok"
    assert occurrences == fire_ats == [NOW + timedelta(minutes=1)]
    assert until == NOW + timedelta(minutes=2, microseconds=-1)


async def test_database_failures_are_logged_once_and_the_loop_goes_on() -> None:
    buffer = io.StringIO()
    logs.configure("json", "info", stream=buffer)
    try:
        store = FakeStore([Definition("ok", every=timedelta(seconds=1))], failures=3)
        stop = asyncio.Event()
        materializer = Materializer(store, MaterializerConfig(timedelta(seconds=60), 0.01))
        task = asyncio.create_task(materializer.run(stop), name="materializer-under-test")
        await eventually(lambda: len(store.passes) >= 2, 5, "passes after the failures")
        stop.set()
        await asyncio.wait_for(task, 5)
    finally:
        structlog.reset_defaults()
    text = buffer.getvalue()
    assert text.count('"schedules_materialise_failed"') == 1
    assert text.count('"schedules_materialise_recovered"') == 1
