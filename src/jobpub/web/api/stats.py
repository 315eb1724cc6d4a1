"""GET /api/stats: the queue at a glance, cheap on a table of millions of rows."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from jobpub.db.web import Count, FleetStats, MinuteStats, ProbeStatus, Stats
from jobpub.web.deps import Config, Store

router = APIRouter(tags=["stats"])


class CountOut(BaseModel):
    value: int
    exact: bool = Field(
        description="false: at least `value` (counting stopped there), or an estimate"
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
        description="jobs by state: pending, due (pending and due now), published (with "
        "expired), dead"
    )
    oldest_due_age_s: float | None = Field(description="how late the oldest due job is")
    published_per_s: float = Field(description="mean over the last `rate_window_s`")
    rate_window_s: int
    schedules: int
    schedules_enabled: int
    pauses: int = Field(description="paused topic filters (/api/pauses)")
    replicas_live: int = Field(
        description="replicas whose heartbeat is younger than JOBPUB_REPLICA_STALE_AFTER"
    )
    measured_at: datetime
    last_hour: list[MinuteOut] | None = None
    probe: ProbeOut | None = Field(
        default=None, description="the delivery probe (JOBPUB_PROBE_TOPIC); zeros when off"
    )


def count_out(count: Count) -> CountOut:
    return CountOut(value=count.value, exact=count.exact)


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


def stats_out(
    stats: Stats, fleet: FleetStats, history: list[MinuteStats], *, with_history: bool
) -> StatsOut:
    # The last complete minutes: the current one has only just begun.
    complete = history[-RATE_MINUTES - 1 : -1] if len(history) > 1 else []
    rate = sum(m.published for m in complete) / (60 * len(complete)) if complete else 0.0
    return StatsOut(
        counts={
            "pending": count_out(stats.pending),
            "due": count_out(stats.due),
            "published": count_out(stats.published),
            "dead": count_out(stats.dead),
        },
        oldest_due_age_s=stats.oldest_due_age_s,
        published_per_s=round(rate, 3),
        rate_window_s=60 * len(complete),
        schedules=stats.schedules,
        schedules_enabled=stats.schedules_enabled,
        pauses=len(fleet.paused_filters),
        replicas_live=fleet.live_replicas,
        measured_at=stats.measured_at,
        last_hour=[minute_out(m) for m in history] if with_history else None,
    )


@router.get("/stats", response_model=StatsOut)
async def get_stats(store: Store, config: Config, history: bool = False) -> StatsOut:
    """Counts by state, the due backlog's age, the publish rate, pauses, live replicas;
    `?history=true` adds the last hour minute by minute."""
    minutes = 60 if history else RATE_MINUTES + 1
    stats, fleet = await store.stats(), await store.fleet(config.replica_stale_after)
    out = stats_out(stats, fleet, await store.history(minutes), with_history=history)
    out.probe = probe_out(await store.probe_status())
    return out
