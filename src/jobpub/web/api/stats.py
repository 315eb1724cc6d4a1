"""GET /api/stats: the queue at a glance, cheap on a table of millions of rows."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from jobpub.db.stats import Count, CountKind, Stats
from jobpub.db.web import Fleet, MinuteStats, ProbeStatus
from jobpub.web.deps import Config, Store

router = APIRouter(tags=["stats"])


class CountOut(BaseModel):
    value: int
    exact: bool = Field(description="false: `value` is approximate (`kind` says how)")
    kind: CountKind = Field(
        description="exact: counted; at_least: counting stopped at `value`; estimate: the"
        " planner's, from the table statistics (the published and expired counts always are)"
    )


class MinuteOut(BaseModel):
    minute_start: datetime
    published: int
    published_per_s: float
    max_lag_s: float | None
    dead: int
    due_backlog: int


class ProbeOut(BaseModel):
    """The end-to-end delivery probe over the last hour (docs/reliability.md)."""

    last_received_at: datetime | None = Field(description="when the last probe arrived")
    last_latency_s: float | None = Field(description="that probe's fire_at to its arrival")
    received: int = Field(description="probes received in the last hour")
    missing: int = Field(
        description="probes of the last hour published (or refused) and never received in time"
    )


def probe_out(status: ProbeStatus) -> ProbeOut:
    return ProbeOut(
        last_received_at=status.last_received_at,
        last_latency_s=status.last_latency_s,
        received=status.received,
        missing=status.missing,
    )


class StatsOut(BaseModel):
    counts: dict[str, CountOut] = Field(
        description="jobs by state: pending, due (pending, due now and not waiting out a"
        " retry's backoff), published, expired, dead"
    )
    oldest_due_age_s: float | None = Field(description="how late the oldest due job is")
    published_per_s: float = Field(
        description="mean over the last `rate_window_s` seconds: the complete minutes of the"
        " last few, or the span of the newest published jobs when they are many"
    )
    rate_window_s: int
    schedules: int
    schedules_enabled: int
    pauses: int = Field(description="paused topic filters (/api/pauses)")
    replicas_live: int = Field(
        description="replicas whose heartbeat is within JOBPUB_REPLICA_STALE_AFTER"
    )
    measured_at: datetime
    last_hour: list[MinuteOut] | None = None
    probe: ProbeOut | None = Field(
        default=None, description="the delivery probe (JOBPUB_PROBE_TOPIC); zeros when off"
    )


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


def stats_out(
    stats: Stats, fleet: Fleet, probe: ProbeStatus, history: list[MinuteStats] | None
) -> StatsOut:
    return StatsOut(
        counts={
            "pending": count_out(stats.pending),
            "due": count_out(stats.due),
            "published": count_out(stats.published),
            "expired": count_out(stats.expired),
            "dead": count_out(stats.dead),
        },
        oldest_due_age_s=stats.oldest_due_age_s,
        published_per_s=round(stats.published_per_s, 3),
        rate_window_s=round(stats.rate_window_s),
        schedules=stats.schedules,
        schedules_enabled=stats.schedules_enabled,
        pauses=fleet.pauses,
        replicas_live=fleet.live_replicas,
        measured_at=stats.measured_at,
        last_hour=[minute_out(m) for m in history] if history is not None else None,
        probe=probe_out(probe),
    )


@router.get("/stats", response_model=StatsOut)
async def get_stats(store: Store, config: Config, history: bool = False) -> StatsOut:
    """Counts by state, the due backlog's age, the publish rate, pauses, live replicas,
    the delivery probe; `?history=true` adds the last hour minute by minute."""
    # The rate comes with the counts (the last few complete minutes, a bounded read); the
    # minute-by-minute history, which reads every row settled in the hour, only when asked.
    stats = await store.stats()
    fleet = await store.fleet(config.replica_stale_after)
    probe = await store.probe_status()
    return stats_out(stats, fleet, probe, await store.history(60) if history else None)
