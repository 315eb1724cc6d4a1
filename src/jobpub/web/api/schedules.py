"""/api/schedules: recurring schedules (docs/schedules.md) with their next occurrences."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from jobpub.db.web import ScheduleDetail
from jobpub.scheduling.occurrences import InvalidSchedule, check_cron, fire_at, occurrences_after
from jobpub.web.deps import Config, Store
from jobpub.web.problems import Problem
from jobpub.web.validation import Duration, Topic, outside_prefixes

router = APIRouter(prefix="/schedules", tags=["schedules"])

CatchUp = Literal["all", "latest", "none"]
Name = Annotated[str, Field(min_length=1, max_length=200)]
UPCOMING = 5


class ScheduleOut(BaseModel):
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
    catch_up: CatchUp
    disabled_reason: str | None
    next_fire_at: datetime | None = Field(description="its earliest pending job")
    next_occurrences: list[datetime] = Field(
        description=f"the fire_at of its next {UPCOMING} occurrences from now"
    )
    created_at: datetime
    updated_at: datetime


def next_occurrences(schedule: ScheduleDetail, count: int = UPCOMING) -> list[datetime]:
    """The schedule's next occurrences after now, as the materialiser computes them."""
    if not schedule.enabled:
        return []
    try:
        upcoming = occurrences_after(schedule, datetime.now(UTC))
        within = itertools.takewhile(
            lambda o: schedule.ends_at is None or o < schedule.ends_at, upcoming
        )
        return [fire_at(schedule, o) for o in itertools.islice(within, count)]
    except InvalidSchedule:
        return []


def schedule_out(schedule: ScheduleDetail) -> ScheduleOut:
    return ScheduleOut.model_validate(
        {
            **{name: getattr(schedule, name) for name in ScheduleDetail.__slots__},
            "next_occurrences": next_occurrences(schedule),
        }
    )


def _check_cron(cron: str | None) -> None:
    if cron is not None:
        try:
            check_cron(cron)
        except InvalidSchedule as exc:
            raise ValueError(str(exc)) from exc


class ScheduleFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    topic: Topic | None = None
    payload: str | None = None
    every: Duration | None = Field(default=None, description="30s, 5m, 1h, PT30S or seconds")
    cron: str | None = Field(default=None, description="'0 2 * * *'; 6 fields: seconds first")
    timezone: str | None = Field(default=None, description="IANA name, for cron")
    qos: Literal[0, 1, 2] | None = None
    retain: bool | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    enabled: bool | None = None
    spread: Duration | None = None
    expire_after: Duration | None = None
    catch_up: CatchUp | None = None

    @model_validator(mode="after")
    def _checked(self) -> ScheduleFields:
        if self.every is not None and self.cron is not None:
            raise ValueError("give every or cron, not both")
        if self.every is not None and self.every < timedelta(seconds=1):
            raise ValueError("every: at least 1 second")
        _check_cron(self.cron)
        return self


class NewScheduleIn(ScheduleFields):
    name: Name
    topic: Topic

    @model_validator(mode="after")
    def _when(self) -> NewScheduleIn:
        if self.every is None and self.cron is None:
            raise ValueError("give every (an interval) or cron (an expression)")
        return self


# Fields that NULL clears (the others keep their value when null or absent).
NULLABLE = frozenset({"starts_at", "ends_at", "expire_after"})


@router.get("", response_model=list[ScheduleOut])
async def list_schedules(store: Store) -> list[ScheduleOut]:
    return [schedule_out(s) for s in await store.list_schedules()]


@router.get("/{name}", response_model=ScheduleOut)
async def get_schedule(name: str, store: Store) -> ScheduleOut:
    return schedule_out(await store.get_schedule(name))


@router.post("", status_code=201, response_model=ScheduleOut)
async def create_schedule(
    schedule: NewScheduleIn, store: Store, config: Config, response: Response
) -> ScheduleOut:
    """Add a schedule; 409 if the name is taken."""
    refusal = outside_prefixes(schedule.topic, config.topic_prefixes)
    if refusal:
        raise Problem(400, refusal, "topic-not-allowed")
    values = schedule.model_dump()
    defaults = {"payload": "", "timezone": "UTC", "qos": 1, "retain": False,
                "enabled": True, "spread": timedelta(0), "catch_up": "latest"}  # fmt: skip
    for name, default in defaults.items():
        if values[name] is None:
            values[name] = default
    created = await store.create_schedule(values)
    response.headers["Location"] = f"/api/schedules/{created.name}"
    return schedule_out(created)


@router.patch("/{name}", response_model=ScheduleOut)
async def update_schedule(
    name: str, change: ScheduleFields, store: Store, config: Config
) -> ScheduleOut:
    """Change the fields given; its occurrences not yet due are made again from now."""
    if change.topic is not None and (
        refusal := outside_prefixes(change.topic, config.topic_prefixes)
    ):
        raise Problem(400, refusal, "topic-not-allowed")
    given = change.model_dump(exclude_unset=True)
    values = {k: v for k, v in given.items() if v is not None or k in NULLABLE}
    return schedule_out(await store.update_schedule(name, values))


@router.delete("/{name}", status_code=204)
async def delete_schedule(name: str, store: Store) -> Response:
    """Delete a schedule and its occurrences not yet due."""
    await store.delete_schedule(name)
    return Response(status_code=204)
