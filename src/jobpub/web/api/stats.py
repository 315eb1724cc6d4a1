"""GET /api/stats: the queue at a glance, cheap on a table of millions of rows."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from jobpub.db.web import Count, CountKind, MinuteStats, Stats
from jobpub.web.deps import Store

router = APIRouter(tags=["stats"])


class CountOut(BaseModel):
    value: int
    exact: bool = Field(description="false: `value` is approximate (`kind` says how)")
    kind: CountKind = Field(
        description="exact: counted; at_least: counting stopped at `value`; estimate: the"
        " planner's, from the table statistics (the published count always is)"
    )


class MinuteOut(BaseModel):
    minute_start: datetime
    published: int
    published_per_s: float
    max_lag_s: float | None
    dead: int
    due_backlog: int


class StatsOut(BaseModel):
    counts: dict[str, CountOut] = Field(
        description="jobs by state: pending, due (pending and due now), published, dead"
    )
    oldest_due_age_s: float | None = Field(description="how late the oldest due job is")
    published_per_s: float = Field(
        description="mean over the last `rate_window_s` seconds: the complete minutes of the"
        " last few, or the span of the newest published jobs when they are many"
    )
    rate_window_s: int
    schedules: int
    schedules_enabled: int
    measured_at: datetime
    last_hour: list[MinuteOut] | None = None


def count_out(count: Count) -> CountOut:
    return CountOut(value=count.value, exact=count.exact, kind=count.kind)


def minute_out(minute: MinuteStats) -> MinuteOut:
    return MinuteOut(
        minute_start=minute.minute_start,
        published=minute.published,
        published_per_s=round(minute.published / 60, 3),
        max_lag_s=minute.max_lag_s,
        dead=minute.dead,
        due_backlog=minute.due_backlog,
    )


RATE_MINUTES = 5


def stats_out(stats: Stats, history: list[MinuteStats] | None) -> StatsOut:
    return StatsOut(
        counts={
            "pending": count_out(stats.pending),
            "due": count_out(stats.due),
            "published": count_out(stats.published),
            "dead": count_out(stats.dead),
        },
        oldest_due_age_s=stats.oldest_due_age_s,
        published_per_s=round(stats.published_per_s, 3),
        rate_window_s=round(stats.rate_window_s),
        schedules=stats.schedules,
        schedules_enabled=stats.schedules_enabled,
        measured_at=stats.measured_at,
        last_hour=[minute_out(m) for m in history] if history is not None else None,
    )


@router.get("/stats", response_model=StatsOut)
async def get_stats(store: Store, history: bool = False) -> StatsOut:
    """Counts by state, the due backlog's age, the publish rate; `?history=true` adds
    the last hour minute by minute."""
    # The rate comes with the counts (the last RATE_MINUTES complete minutes, a bounded
    # read); the minute-by-minute history only when asked for.
    stats = await store.stats(RATE_MINUTES)
    return stats_out(stats, await store.history(60) if history else None)
