"""The queue at a glance, cheap on a table of millions of rows: /api/stats, the dashboard's
overview and `jobpub stats` read the same numbers.

Nothing counts a whole table: counts are exact up to COUNT_CAP rows and labelled "at
least" beyond; the table's size and the expired rows are the planner's statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Final, LiteralString

from psycopg.rows import dict_row

from jobpub.db.database import Connection

# A count reads at most this many index entries or rows; past it the answer is "at least".
COUNT_CAP: Final = 100_000

# The overview's numbers in one round trip. Pending counts walk the partial index
# jobs_pending_fire_at_idx and stop at the cap. Due is the claim's own test
# (queries.CLAIM_DUE_JOBS, less the replica's lookahead and partition): fire_at passed and
# no retry backoff still running, so a row waiting out its backoff is pending, not due; the
# oldest due row is the first such entry of the index. Dead rows have no index of their
# own: capped too. Expired rows are settled like published ones and no index tells them
# apart (counting them reads every settled row): their share of the table comes from the
# statistics ANALYZE keeps of the `state` column (0 before the first ANALYZE, or when too
# few to be sampled), times the table's size, the planner's estimate (reltuples, -1
# before the first ANALYZE); published is that size less the other states, approximate.
STATS: Final[LiteralString] = """
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
    (SELECT greatest(reltuples, 0)::bigint FROM pg_class
     WHERE oid = to_regclass('jobs')) AS total_estimate,
    (SELECT coalesce(max(stats.most_common_freqs[
                array_position(stats.most_common_vals::text::text[], 'expired')]), 0)::float8
     FROM pg_stats AS stats
     JOIN pg_class AS jobs_table ON jobs_table.oid = to_regclass('jobs')
     JOIN pg_namespace AS namespace ON namespace.oid = jobs_table.relnamespace
     WHERE stats.schemaname = namespace.nspname AND stats.tablename = jobs_table.relname
       AND stats.attname = 'state' AND NOT stats.inherited) AS expired_share,
    (SELECT count(*) FROM schedules) AS schedules,
    (SELECT count(*) FROM schedules WHERE enabled) AS schedules_enabled,
    now() AS measured_at
"""

# What `jobpub stats` adds for an operator: the last minute's settled rows, read through
# jobs_published_processed_at_idx (a range of its newest entries; expired rows are
# processed too and told apart by expired_at), capped like the counts above; the live
# replicas by the bound the replicas themselves use (queries.BEAT_REPLICA), since a
# killed fleet leaves its rows behind; and the paused filters, a small table.
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


@dataclass(frozen=True, slots=True)
class Count:
    value: int
    exact: bool  # False: at least `value` (the count stopped at COUNT_CAP), or an estimate


@dataclass(frozen=True, slots=True)
class Stats:
    pending: Count
    due: Count  # as the claim judges it: a row waiting out a retry's backoff is not due
    dead: Count
    expired: Count  # the planner's statistics: never exact
    published: Count  # the table's estimated size less the other states: never exact
    oldest_due_age_s: float | None
    schedules: int
    schedules_enabled: int
    measured_at: datetime


@dataclass(frozen=True, slots=True)
class FleetStats:
    published_last_minute: Count
    expired_last_minute: Count
    live_replicas: int
    paused_filters: list[str]


def _capped(value: int) -> Count:
    return Count(int(value), exact=int(value) < COUNT_CAP)


async def read_stats(connection: Connection) -> Stats:
    """The overview's numbers (STATS); the caller translates errors (database_errors)."""
    async with connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(STATS, {"cap": COUNT_CAP})
        row = await cursor.fetchone()
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    pending, dead = _capped(row["pending"]), _capped(row["dead"])
    total = int(row["total_estimate"])
    expired = round(total * float(row["expired_share"]))
    published = max(0, total - pending.value - dead.value - expired)
    return Stats(
        pending=pending,
        due=_capped(row["due"]),
        dead=dead,
        expired=Count(expired, exact=False),
        published=Count(published, exact=False),
        oldest_due_age_s=row["oldest_due_age_s"],
        schedules=int(row["schedules"]),
        schedules_enabled=int(row["schedules_enabled"]),
        measured_at=row["measured_at"],
    )


async def read_fleet(connection: Connection, stale_after: float) -> FleetStats:
    """The last minute's throughput, the live replicas (heartbeat within `stale_after`
    seconds) and the pauses (FLEET); the caller translates errors."""
    async with connection.cursor(row_factory=dict_row) as cursor:
        await cursor.execute(FLEET, {"cap": COUNT_CAP, "stale_after": stale_after})
        row = await cursor.fetchone()
    assert row is not None  # noqa: S101 - a SELECT without FROM returns one row
    return FleetStats(
        published_last_minute=_capped(row["published_last_minute"]),
        expired_last_minute=_capped(row["expired_last_minute"]),
        live_replicas=int(row["live_replicas"]),
        paused_filters=list(row["paused_filters"]),
    )
