"""When a schedule fires: its occurrences in a window, catch-up after downtime, spread.

Pure functions of a schedule's definition and the database's clock, so every replica
computes the same occurrences (and the same spread offsets) for the same schedule.
Cron expressions are read by cronsim (docs/schedules.md says why this library).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

CatchUp = Literal["all", "latest", "none"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# An interval schedule without starts_at counts from the Unix epoch, so `every 30 s`
# fires at :00 and :30 and every replica (and every edit) agrees on the grid.


class InvalidSchedule(ValueError):
    """A definition the database could not check: an invalid cron expression, say."""


class ScheduleDefinition(Protocol):
    """What the occurrence functions read of a schedule row (jobpub.db.schedules)."""

    @property
    def name(self) -> str: ...
    @property
    def every(self) -> timedelta | None: ...
    @property
    def cron(self) -> str | None: ...
    @property
    def timezone(self) -> str: ...
    @property
    def starts_at(self) -> datetime | None: ...
    @property
    def ends_at(self) -> datetime | None: ...
    @property
    def spread(self) -> timedelta: ...
    @property
    def catch_up(self) -> str: ...
    @property
    def materialised_until(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class Plan:
    """What one pass materialises for a schedule: occurrences, their fire_at, the cursor."""

    occurrences: list[datetime]
    fire_ats: list[datetime]
    materialised_until: datetime


def check(schedule: ScheduleDefinition) -> None:
    """Raise InvalidSchedule for what the database could not refuse at INSERT."""
    _zone(schedule.timezone)
    if schedule.cron is not None:
        try:
            CronSim(schedule.cron, datetime.now(UTC))
        except CronSimError as exc:
            raise InvalidSchedule(f"invalid cron expression {schedule.cron!r}: {exc}") from exc


def plan(schedule: ScheduleDefinition, now: datetime, horizon: timedelta, limit: int) -> Plan:
    """Occurrences after the cursor up to `now + horizon` (or ends_at), at most `limit`.

    Occurrences already due (at or before `now`) were missed: no replica materialised
    them in time (downtime, or a schedule created moments ago). The catch-up policy
    picks which of them fire: all, the latest only, or none.
    """
    check(schedule)
    until = now + horizon
    if schedule.ends_at is not None:
        until = min(until, schedule.ends_at)
    after = schedule.materialised_until
    if schedule.starts_at is not None:
        after = max(after, schedule.starts_at - timedelta(microseconds=1))
    if after >= until:
        return Plan([], [], max(after, schedule.materialised_until))
    chosen: list[datetime] = []
    if after < now:
        chosen += _missed(schedule, after, now, limit)
        after = now
    cursor = until
    for occurrence in occurrences_after(schedule, after):
        if len(chosen) >= limit:
            cursor = chosen[-1]  # the rest next pass
            break
        if occurrence > until:
            # Nothing until this one: the cursor may jump to just before it, so a daily
            # schedule is looked at once a day, not on every refill of the horizon.
            if until != schedule.ends_at:
                cursor = occurrence - timedelta(microseconds=1)
            break
        chosen.append(occurrence)
    return Plan(chosen, [fire_at(schedule, o) for o in chosen], cursor)


def _missed(
    schedule: ScheduleDefinition, after: datetime, now: datetime, limit: int
) -> list[datetime]:
    policy = schedule.catch_up
    if policy == "none":
        return []
    if policy == "latest":
        latest = latest_at_or_before(schedule, now)
        return [latest] if latest is not None and latest > after else []
    missed: list[datetime] = []
    for occurrence in occurrences_after(schedule, after):
        if occurrence > now or len(missed) >= limit:
            break
        missed.append(occurrence)
    return missed


def occurrences_after(schedule: ScheduleDefinition, after: datetime) -> Iterator[datetime]:
    """The schedule's occurrences strictly after `after`, in order, as UTC datetimes."""
    if schedule.every is not None:
        step = schedule.every
        anchor = schedule.starts_at or EPOCH
        count = max(0, (after - anchor) // step + 1)
        while True:
            yield anchor + count * step
            count += 1
    assert schedule.cron is not None  # noqa: S101 - the table's check: exactly one is set
    zone = _zone(schedule.timezone)
    try:
        for occurrence in CronSim(schedule.cron, after.astimezone(zone)):
            yield occurrence.astimezone(UTC)
    except CronSimError as exc:
        raise InvalidSchedule(f"invalid cron expression {schedule.cron!r}: {exc}") from exc


def latest_at_or_before(schedule: ScheduleDefinition, moment: datetime) -> datetime | None:
    """The last occurrence at or before `moment` (after starts_at), if any."""
    floor = schedule.starts_at
    if schedule.every is not None:
        anchor = schedule.starts_at or EPOCH
        if moment < anchor:
            return None
        return anchor + ((moment - anchor) // schedule.every) * schedule.every
    assert schedule.cron is not None  # noqa: S101 - the table's check: exactly one is set
    zone = _zone(schedule.timezone)
    # Reverse iteration starts strictly before its start: begin one second later.
    start = (moment + timedelta(seconds=1)).replace(microsecond=0).astimezone(zone)
    try:
        previous = next(CronSim(schedule.cron, start, reverse=True), None)
    except CronSimError as exc:
        raise InvalidSchedule(f"invalid cron expression {schedule.cron!r}: {exc}") from exc
    if previous is None:
        return None
    previous = previous.astimezone(UTC)
    if previous > moment or (floor is not None and previous < floor):
        return None
    return previous


def fire_at(schedule: ScheduleDefinition, occurrence: datetime) -> datetime:
    """The occurrence plus its spread offset: a point within [0, spread) after it, the
    same on every replica (a hash of name and occurrence), in whole milliseconds."""
    window_ms = int(schedule.spread / timedelta(milliseconds=1))
    if window_ms <= 0:
        return occurrence
    key = f"{schedule.name}\x00{occurrence.astimezone(UTC).isoformat()}".encode()
    digest = int.from_bytes(hashlib.sha256(key).digest()[:8], "big")
    return occurrence + timedelta(milliseconds=digest % window_ms)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidSchedule(f"unknown time zone {name!r}") from exc


def check_cron(expression: str) -> None:
    """Raise InvalidSchedule if cronsim cannot read `expression` (`jobpub schedule add`)."""
    try:
        CronSim(expression, datetime.now(UTC))
    except CronSimError as exc:
        raise InvalidSchedule(f"invalid cron expression {expression!r}: {exc}") from exc
