"""When schedules fire: cron in a time zone (DST both ways), intervals, catch-up, spread."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from jobpub.scheduling.occurrences import (
    InvalidSchedule,
    fire_at,
    latest_at_or_before,
    occurrences_after,
    plan,
)

BERLIN = ZoneInfo("Europe/Berlin")


@dataclass(frozen=True)
class Definition:
    name: str = "s"
    every: timedelta | None = None
    cron: str | None = None
    timezone: str = "UTC"
    starts_at: datetime | None = None
    ends_at: datetime | None = None
    spread: timedelta = timedelta(0)
    catch_up: str = "latest"
    materialised_until: datetime = datetime(2026, 1, 1, tzinfo=UTC)


def first(schedule: Definition, after: datetime, count: int) -> list[datetime]:
    found = []
    for occurrence in occurrences_after(schedule, after):
        found.append(occurrence)
        if len(found) == count:
            return found
    return found


def test_spring_forward_0230_fires_once_at_0300_local() -> None:
    # 2026-03-29: Berlin clocks jump from 02:00 to 03:00; 02:30 does not exist that day.
    nightly = Definition(cron="30 2 * * *", timezone="Europe/Berlin")
    got = first(nightly, datetime(2026, 3, 28, 12, tzinfo=BERLIN), 3)
    assert [o.astimezone(BERLIN).isoformat() for o in got] == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_fall_back_0130_fires_once_at_the_first_0130() -> None:
    # 2026-10-25: Berlin clocks go from 03:00 back to 02:00; 02:30 happens twice.
    nightly = Definition(cron="30 2 * * *", timezone="Europe/Berlin")
    got = first(nightly, datetime(2026, 10, 24, 12, tzinfo=BERLIN), 2)
    assert [o.astimezone(BERLIN).isoformat() for o in got] == [
        "2026-10-25T02:30:00+02:00",  # the first 02:30 (summer time), not the second
        "2026-10-26T02:30:00+01:00",
    ]
    early = Definition(cron="30 1 * * *", timezone="Europe/Berlin")  # not ambiguous
    got = first(early, datetime(2026, 10, 24, 12, tzinfo=BERLIN), 2)
    assert [o.astimezone(BERLIN).isoformat() for o in got] == [
        "2026-10-25T01:30:00+02:00",
        "2026-10-26T01:30:00+01:00",
    ]


def test_hourly_cron_over_fall_back_fires_every_real_hour() -> None:
    # A wildcard hour follows the clock as Vixie cron does: the repeated 02:00 fires in
    # both summer and winter time, so an hourly schedule never skips a real hour.
    hourly = Definition(cron="0 * * * *", timezone="Europe/Berlin")
    got = first(hourly, datetime(2026, 10, 25, 0, 30, tzinfo=BERLIN), 4)
    assert [o.astimezone(BERLIN).isoformat() for o in got] == [
        "2026-10-25T01:00:00+02:00",
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",
        "2026-10-25T03:00:00+01:00",
    ]


def test_cron_occurrences_are_in_the_schedules_time_zone() -> None:
    nightly = Definition(cron="0 2 * * *", timezone="Europe/Berlin")
    (occurrence,) = first(nightly, datetime(2026, 5, 31, 12, tzinfo=UTC), 1)
    assert occurrence == datetime(2026, 6, 1, 0, tzinfo=UTC)  # 02:00 CEST


def test_six_field_cron_has_seconds() -> None:
    every_ten = Definition(cron="*/10 * * * * *")
    got = first(every_ten, datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC), 2)
    assert [o.second for o in got] == [10, 20]


def test_interval_counts_from_the_epoch_or_starts_at() -> None:
    heartbeat = Definition(every=timedelta(seconds=30))
    got = first(heartbeat, datetime(2026, 1, 1, 0, 0, 30, tzinfo=UTC), 2)
    assert got == [
        datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 1, 30, tzinfo=UTC),
    ]
    anchored = replace(heartbeat, starts_at=datetime(2026, 1, 1, 0, 0, 7, tzinfo=UTC))
    assert first(anchored, datetime(2025, 1, 1, tzinfo=UTC), 1) == [anchored.starts_at]


def test_catch_up_latest_all_none_after_downtime() -> None:
    down_since = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    now = down_since + timedelta(minutes=5, seconds=10)
    base = Definition(every=timedelta(minutes=1), materialised_until=down_since)
    horizon = timedelta(minutes=2)
    latest = plan(base, now, horizon, limit=100)
    assert latest.occurrences[0] == down_since + timedelta(minutes=5)  # the latest missed
    assert latest.occurrences[1:] == [now + timedelta(seconds=50), now + timedelta(seconds=110)]
    everything = plan(replace(base, catch_up="all"), now, horizon, limit=100)
    assert everything.occurrences[:5] == [down_since + timedelta(minutes=m) for m in range(1, 6)]
    assert len(everything.occurrences) == 7
    nothing = plan(replace(base, catch_up="none"), now, horizon, limit=100)
    assert nothing.occurrences == latest.occurrences[1:]
    # Nothing more until 00:08: the cursor waits just before it.
    assert latest.materialised_until == down_since + timedelta(minutes=8, microseconds=-1)


def test_a_daily_schedule_is_looked_at_again_only_near_its_next_occurrence() -> None:
    now = datetime(2026, 6, 1, 12, tzinfo=UTC)
    nightly = Definition(cron="0 2 * * *", timezone="Europe/Berlin", materialised_until=now)
    planned = plan(nightly, now, timedelta(seconds=60), limit=10)
    assert planned.occurrences == []
    assert planned.materialised_until == datetime(2026, 6, 2, 0, tzinfo=UTC) - timedelta(
        microseconds=1
    )


def test_plan_stops_at_the_limit_and_resumes_from_the_cursor() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    base = Definition(every=timedelta(seconds=1), catch_up="all", materialised_until=start)
    now = start + timedelta(hours=1)
    part = plan(base, now, timedelta(seconds=60), limit=1000)
    assert len(part.occurrences) == 1000
    assert part.materialised_until == part.occurrences[-1]
    rest = plan(replace(base, materialised_until=part.materialised_until), now, timedelta(0), 1000)
    assert rest.occurrences[0] == part.occurrences[-1] + timedelta(seconds=1)


def test_nothing_after_ends_at_or_before_starts_at() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    windowed = Definition(
        every=timedelta(seconds=10),
        starts_at=start + timedelta(seconds=25),
        ends_at=start + timedelta(seconds=55),
        catch_up="none",
        materialised_until=start,
    )
    planned = plan(windowed, start, timedelta(minutes=5), limit=100)
    assert planned.occurrences == [start + timedelta(seconds=s) for s in (25, 35, 45, 55)]
    assert planned.materialised_until == windowed.ends_at


def test_latest_before_a_moment_for_cron_and_interval() -> None:
    moment = datetime(2026, 3, 4, 10, 17, 30, tzinfo=UTC)
    assert latest_at_or_before(Definition(cron="*/5 * * * *"), moment) == moment.replace(
        minute=15, second=0
    )
    assert latest_at_or_before(Definition(every=timedelta(minutes=10)), moment) == moment.replace(
        minute=10, second=0
    )


def test_spread_is_within_the_window_and_the_same_on_every_call() -> None:
    spread = Definition(name="wide", spread=timedelta(seconds=10))
    occurrence = datetime(2026, 1, 1, 9, tzinfo=UTC)
    offsets = {fire_at(replace(spread, name=f"s{i}"), occurrence) - occurrence for i in range(500)}
    assert all(timedelta(0) <= o < timedelta(seconds=10) for o in offsets)
    assert len(offsets) > 400, "spread out, not bunched"
    assert fire_at(spread, occurrence) == fire_at(spread, occurrence)
    assert fire_at(Definition(), occurrence) == occurrence


@pytest.mark.parametrize(
    ("cron", "timezone"), [("61 * * * *", "UTC"), ("not cron", "UTC"), ("0 2 * * *", "Mars/Base")]
)
def test_what_sql_cannot_check_is_refused_by_plan(cron: str, timezone: str) -> None:
    with pytest.raises(InvalidSchedule):
        plan(Definition(cron=cron, timezone=timezone), datetime.now(UTC), timedelta(60), 10)
