"""`python -m bench index-cost`: what `jobs_settled_fire_at_idx` (migration 16) costs publishing.

The drain moves too little against this machine's noise to show one index entry per
row, so this times the two statements that write it, in the bench's database: INSERT
of ROWS pending rows (10,000 per statement) and MARK_PUBLISHED of them (1,000 ids per
statement, as a replica marks a batch), without and with the index, rounds alternating
which goes first; medians of the microseconds per row.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Final

import psycopg

from bench.harness import Bench, ScenarioResult
from jobpub.db.queries import MARK_PUBLISHED

ROWS = 100_000
INSERT_CHUNK = 10_000
MARK_BATCH = 1_000
ROUNDS = 10

_INSERT: Final = """
INSERT INTO jobs (id, topic, payload, fire_at)
SELECT g, 'bench/index-cost/' || g, 'x', now() - interval '1 minute' + g * interval '1 ms'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""


def _round(conn: psycopg.Connection[tuple[object, ...]], *, indexed: bool) -> tuple[float, float]:
    """(insert, mark) microseconds per row, on an emptied table."""
    conn.execute("TRUNCATE jobs")
    conn.execute("DROP INDEX IF EXISTS jobs_settled_fire_at_idx")
    if indexed:
        conn.execute(
            "CREATE INDEX jobs_settled_fire_at_idx ON jobs (fire_at, id)"
            " WHERE processed OR failed_at IS NOT NULL"
        )
    conn.execute("VACUUM ANALYZE jobs")
    started = time.perf_counter()
    for first in range(1, ROWS + 1, INSERT_CHUNK):
        conn.execute(_INSERT, {"first": first, "last": first + INSERT_CHUNK - 1})
    inserted = time.perf_counter()
    for first in range(1, ROWS + 1, MARK_BATCH):
        conn.execute(MARK_PUBLISHED, {"ids": list(range(first, first + MARK_BATCH))})
    marked = time.perf_counter()
    return (inserted - started) / ROWS * 1e6, (marked - inserted) / ROWS * 1e6


def measure(bench: Bench, rounds: int = ROUNDS) -> list[ScenarioResult]:
    timings: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with psycopg.connect(bench.db_url, autocommit=True) as conn:
        for number in range(rounds):
            for indexed in (False, True) if number % 2 == 0 else (True, False):
                timings[indexed].append(_round(conn, indexed=indexed))
                insert_us, mark_us = timings[indexed][-1]
                print(f"  round {number + 1} {'with' if indexed else 'without'}: insert "
                      f"{insert_us:.1f}, mark {mark_us:.1f} µs/row", file=sys.stderr)  # fmt: skip
        conn.execute("TRUNCATE jobs")
    results = []
    for indexed in (False, True):
        insert_us = statistics.median(t[0] for t in timings[indexed])
        mark_us = statistics.median(t[1] for t in timings[indexed])
        notes = {
            "insert_us_per_row": round(insert_us, 1),
            "mark_us_per_row": round(mark_us, 1),
            "insert_runs": [round(t[0], 1) for t in timings[indexed]],
            "mark_runs": [round(t[1], 1) for t in timings[indexed]],
        }
        name = "with-settled-index" if indexed else "without"
        # jobs/s: rows marked per second of database time, the median round's
        results.append(ScenarioResult(name, 0, ROWS, round(1e6 / mark_us), None, [], notes))
    return results
