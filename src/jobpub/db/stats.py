"""The queue at a glance, cheap on a table of millions of rows: /api/stats, the dashboard's
overview and `jobpub stats` read the same numbers.

Nothing counts a whole table: counts are exact up to COUNT_CAP rows and, past it, the
planner's estimate (or "at least" the cap), labelled so; the table's size, the expired
and the published rows are always the planner's estimates.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal, LiteralString

from psycopg.rows import dict_row

from jobpub.db.database import Connection

# A count reads at most this many index entries (1-2 ms); past it the answer is the
# planner's estimate, labelled so, or "at least" the cap.
COUNT_CAP: Final = 10_000

# The publish rate is over this many complete minutes (the current one has just begun).
RATE_MINUTES: Final = 5

# The overview's numbers in one round trip, none of which reads the table's bulk. Pending
# and dead counts walk small partial indexes (jobs_pending_fire_at_idx,
# jobs_dead_failed_at_idx) and stop at the cap. Due is the claim's own test
# (queries.CLAIM_DUE_JOBS, less the replica's lookahead and partition): fire_at passed and
# no retry backoff still running, so a row waiting out its backoff is pending, not due; the
# oldest due row is the first such entry of the pending index. Sizes are the planner's:
# tuples per page at the last VACUUM or ANALYZE times the pages now (a table that grew
# since is sized as it is), NULL for a relation never analysed. Expired rows are settled
# like published ones and no index tells them apart: their share of the table comes from
# the statistics ANALYZE keeps of the `state` column (0 before the first ANALYZE, or when
# too few to be sampled). 10M rows: 1-3 ms (docs/performance.md).
STATS: Final[LiteralString] = """
WITH sizes AS (
    SELECT relname,
           CASE WHEN reltuples < 0 THEN NULL
                WHEN relpages = 0 THEN reltuples
                ELSE reltuples / relpages
                     * (pg_relation_size(oid) / current_setting('block_size')::int)
           END AS estimate
    FROM pg_class
    WHERE oid IN (to_regclass('jobs'), to_regclass('jobs_pending_fire_at_idx'),
                  to_regclass('jobs_dead_failed_at_idx'))
)
SELECT
    (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE NOT processed AND failed_at IS NULL
                           LIMIT %(cap)s) AS capped) AS pending,
    (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE NOT processed AND failed_at IS NULL
                             AND fire_at <= now()
                             AND (next_attempt_at IS NULL OR next_attempt_at <= now())
                           LIMIT %(cap)s) AS capped) AS due,
    (SELECT count(*) FROM (SELECT 1 FROM jobs WHERE failed_at IS NOT NULL AND NOT processed
                           LIMIT %(cap)s) AS capped) AS dead,
    (SELECT extract(epoch FROM now() - fire_at)::float8 FROM jobs
     WHERE NOT processed AND failed_at IS NULL AND fire_at <= now()
       AND (next_attempt_at IS NULL OR next_attempt_at <= now())
     ORDER BY fire_at, id LIMIT 1) AS oldest_due_age_s,
    (SELECT estimate::bigint FROM sizes WHERE relname = 'jobs') AS total_estimate,
    (SELECT estimate::bigint FROM sizes
     WHERE relname = 'jobs_pending_fire_at_idx') AS pending_estimate,
    (SELECT estimate::bigint FROM sizes
     WHERE relname = 'jobs_dead_failed_at_idx') AS dead_estimate,
    (SELECT coalesce(max(stats.most_common_freqs[
                array_position(stats.most_common_vals::text::text[], 'expired')]), 0)::float8
     FROM pg_stats AS stats
     JOIN pg_class AS jobs_table ON jobs_table.oid = to_regclass('jobs')
     JOIN pg_namespace AS namespace ON namespace.oid = jobs_table.relnamespace
     WHERE stats.schemaname = namespace.nspname AND stats.tablename = jobs_table.relname
       AND stats.attname = 'state' AND NOT stats.inherited) AS expired_share,
    (SELECT count(*) FROM schedules) AS schedules,
    (SELECT count(*) FROM schedules WHERE enabled) AS schedules_enabled,
    rate.published AS rate_published, rate.oldest AS rate_oldest,
    date_trunc('minute', now()) - make_interval(mins => %(rate_minutes)s) AS rate_start,
    date_trunc('minute', now()) AS rate_end,
    now() AS measured_at
FROM (
    -- The publish rate over the last complete minutes: the newest settled-as-processed
    -- rows there (published, and expired ones as the hour's history counts them),
    -- backwards through jobs_published_processed_at_idx, at most the cap of them (when
    -- there are more, the rate is over the time they span).
    SELECT count(*) AS published, min(processed_at) AS oldest
    FROM (SELECT processed_at FROM jobs
          WHERE processed
            AND processed_at >= date_trunc('minute', now())
                                - make_interval(mins => %(rate_minutes)s)
            AND processed_at < date_trunc('minute', now())
          ORDER BY processed_at DESC
          LIMIT %(cap)s) AS newest
) AS rate
"""

# What `jobpub stats` adds for an operator: the last minute's settled rows, read through
# jobs_published_processed_at_idx (a range of its newest entries; expired rows are
# processed too and told apart by expired_at), capped like the counts above; the live
# replicas by the bound the replicas themselves use (queries.BEAT_REPLICA), since a
# killed fleet leaves its rows behind; and the paused filters, a small table. The web
# reads its own (jobpub.db.web.FLEET): the pause count and the replicas it lists.
FLEET: Final[LiteralString] = """
SELECT
    (SELECT count(*) FROM (SELECT 1 FROM jobs
                           WHERE processed AND processed_at >= now() - interval '1 minute'
                             AND expired_at IS NULL
                           LIMIT %(cap)s) AS capped) AS published_last_minute,
    (SELECT count(*) FROM (SELECT 1 FROM jobs
                           WHERE processed AND processed_at >= now() - interval '1 minute'
                             AND expired_at IS NOT NULL
                           LIMIT %(cap)s) AS capped) AS expired_last_minute,
    (SELECT count(*) FROM jobpub_replicas
     WHERE heartbeat_at >= now() - make_interval(secs => %(stale_after)s)) AS live_replicas,
    (SELECT coalesce(array_agg(filter ORDER BY filter), '{}') FROM pauses) AS paused_filters
"""

# How a count was made: counted; counting stopped at COUNT_CAP; the planner's estimate
# (from the statistics of the last VACUUM or ANALYZE, scaled to the relation's size now).
CountKind = Literal["exact", "at_least", "estimate"]
EXACT: Final = "exact"
AT_LEAST: Final = "at_least"
ESTIMATE: Final = "estimate"


@dataclass(frozen=True, slots=True)
class Count:
    value: int
    kind: CountKind = EXACT

    @property
    def exact(self) -> bool:
        return self.kind == EXACT


def count_of(counted: int, estimate: int | None, *, cap: int) -> Count:
    """A count that stopped at `cap`, told apart from a complete one. Past the cap, the
    planner's estimate when there is one and it is larger; else "at least the cap"."""
    if counted < cap:
        return Count(counted)
    if estimate is not None and estimate > counted:
        return Count(estimate, ESTIMATE)
    return Count(counted, AT_LEAST)


def publish_rate(
    published: int, oldest: datetime | None, start: datetime, end: datetime, *, cap: int
) -> tuple[float, float]:
    """(per second, over how many seconds): `published` rows in [start, end), or, when
    counting stopped at `cap`, the cap over the time from the oldest counted to `end`."""
    window = (end - start).total_seconds()
    if published >= cap and oldest is not None:
        window = max((end - oldest).total_seconds(), 0.001)
    return (published / window if window > 0 else 0.0), window


def settled_estimates(
    total: int | None, expired_share: float, pending: Count, dead: Count
) -> tuple[Count, Count]:
    """(expired, published): the table's estimated size times the expired share, and the
    size less every other state, never below zero; estimates whatever the others are (0
    before the first ANALYZE)."""
    size = total or 0
    expired = round(size * expired_share)
    return (
        Count(expired, ESTIMATE),
        Count(max(0, size - pending.value - dead.value - expired), ESTIMATE),
    )


@dataclass(frozen=True, slots=True)
class Stats:
    pending: Count
    due: Count  # as the claim judges it: a row waiting out a retry's backoff is not due
    dead: Count
    expired: Count  # the planner's statistics: always an estimate
    published: Count  # the table's estimated size less the other states: an estimate
    oldest_due_age_s: float | None
    published_per_s: float
    rate_window_s: float  # the time the rate is over
    schedules: int
    schedules_enabled: int
    measured_at: datetime


@dataclass(frozen=True, slots=True)
class FleetStats:
    published_last_minute: Count
    expired_last_minute: Count
    live_replicas: int
    paused_filters: list[str]


async def read_stats(connection: Connection, rate_minutes: int = RATE_MINUTES) -> Stats:
    """The overview's numbers (STATS); the caller translates errors (database_errors)."""
    cap = COUNT_CAP  # read at call time: tests lower it
    async with connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(STATS, {"cap": cap, "rate_minutes": rate_minutes})
        row = await cursor.fetchone()
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    pending = count_of(int(row["pending"]), row["pending_estimate"], cap=cap)
    dead = count_of(int(row["dead"]), row["dead_estimate"], cap=cap)
    expired, published = settled_estimates(
        row["total_estimate"], float(row["expired_share"]), pending, dead
    )
    per_s, window_s = publish_rate(
        int(row["rate_published"]), row["rate_oldest"], row["rate_start"], row["rate_end"],
        cap=cap,
    )  # fmt: skip
    return Stats(
        pending=pending,
        due=count_of(int(row["due"]), None, cap=cap),  # due rows have no index of their own
        dead=dead,
        expired=expired,
        published=published,
        oldest_due_age_s=row["oldest_due_age_s"],
        published_per_s=per_s,
        rate_window_s=window_s,
        schedules=int(row["schedules"]),
        schedules_enabled=int(row["schedules_enabled"]),
        measured_at=row["measured_at"],
    )


async def read_fleet(connection: Connection, stale_after: float) -> FleetStats:
    """The last minute's throughput, the live replicas (heartbeat within `stale_after`
    seconds) and the pauses (FLEET), for `jobpub stats`; the caller translates errors."""
    cap = COUNT_CAP
    async with connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(FLEET, {"cap": cap, "stale_after": stale_after})
        row = await cursor.fetchone()
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    return FleetStats(
        published_last_minute=count_of(int(row["published_last_minute"]), None, cap=cap),
        expired_last_minute=count_of(int(row["expired_last_minute"]), None, cap=cap),
        live_replicas=int(row["live_replicas"]),
        paused_filters=list(row["paused_filters"]),
    )
