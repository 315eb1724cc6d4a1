"""`python -m bench scale`: does the cost of a drain grow with the table?

One replica drains 100,000 due rows in a table that also holds millions of processed
rows or of rows scheduled ahead, then publishes 1,000 jobs/s on time. Each case has a
database of its own, seeded once (INSERT … SELECT generate_series, then VACUUM ANALYZE
and CHECKPOINT: the table as a long-running system has it, hint bits set, statistics
known, no autovacuum starting mid-run); each run deletes what it added, so runs of
different cases interleave and the median of each is reported.
"""

from __future__ import annotations

import dataclasses
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import Bench, ScenarioResult, VerifyingSubscriber, check_delivery

DUE_JOBS = 100_000
ON_TIME_RATE = 1_000  # jobs/s
ON_TIME_SECONDS = 10.0
ON_TIME_LEAD = 3.0
_CASE = re.compile(r"(?:(processed|scheduled)-(\d+)([km]))|(empty)")
_UNITS = {"k": 1_000, "m": 1_000_000}


@dataclass(frozen=True)
class ScaleCase:
    """Rows in the table besides the ones drained: processed ones, or pending ones due
    tomorrow (scheduled ahead)."""

    name: str
    processed: int = 0
    scheduled: int = 0

    @property
    def background(self) -> int:
        return self.processed + self.scheduled


DEFAULT_CASES = "empty,processed-1m,processed-10m,scheduled-1m,scheduled-10m"


def parse_cases(text: str) -> list[ScaleCase]:
    """`empty,processed-1m,scheduled-500k` → the cases, in order, each once; `empty` first
    whatever its place (every case is judged against it), and always there."""
    cases: dict[str, ScaleCase] = {}
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        match = _CASE.fullmatch(item)
        if match is None:
            raise ValueError(
                f"unknown scale case {item!r}: use empty, processed-<N>k|m or scheduled-<N>k|m"
            )
        kind, number, unit, empty = match.groups()
        if empty:
            cases[item] = ScaleCase(item)
            continue
        rows = int(number) * _UNITS[unit]
        if rows <= 0:
            raise ValueError(f"scale case {item!r} has no rows")
        name = f"{kind}-{number}{unit}"
        cases[name] = ScaleCase(name, **{kind: rows})
    ordered = [ScaleCase("empty")]
    ordered += [case for name, case in cases.items() if name != "empty"]
    return ordered


class CaseDatabase:
    """One database per case, seeded once; its URL for the replicas."""

    def __init__(self, bench: Bench, case: ScaleCase) -> None:
        self.case = case
        self.name = f"{bench.db_name}_{case.name.replace('-', '_')}"
        self.url = bench.db_url.rpartition("/")[0] + "/" + self.name
        self._admin_url = bench.db_url
        self._bench = bench
        self.seed_seconds = 0.0

    def create(self) -> None:
        with psycopg.connect(self._admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.name}"')
        subprocess.run([self._bench.python, "-m", "jobpub", "migrate"],
                       env=self._bench.env(database_url=self.url), check=True,
                       capture_output=True)  # fmt: skip
        started = time.monotonic()
        with psycopg.connect(self.url, autocommit=True) as conn:
            # Processed rows: published over the last 6 days, in id order, as a real
            # table's are. Scheduled rows: due tomorrow, spread over a day.
            if self.case.processed:
                conn.execute(
                    "INSERT INTO jobs (id, topic, payload, fire_at, processed, processed_at)"
                    " SELECT g, 'bench/old/' || g, '{\"n\":' || g || '}',"
                    " now() - interval '6 days' + g * (interval '6 days' / %(n)s), true,"
                    " now() - interval '6 days' + g * (interval '6 days' / %(n)s)"
                    " FROM generate_series(1, %(n)s) AS g",
                    {"n": self.case.processed},
                )
            if self.case.scheduled:
                conn.execute(
                    "INSERT INTO jobs (id, topic, payload, fire_at)"
                    " SELECT g, 'bench/ahead/' || g, '{\"n\":' || g || '}',"
                    " now() + interval '1 day' + (g - %(first)s) * (interval '1 day' / %(n)s)"
                    " FROM generate_series(%(first)s, %(first)s + %(n)s - 1) AS g",
                    {"n": self.case.scheduled, "first": self.case.processed + 1},
                )
            conn.execute("VACUUM (ANALYZE) jobs")
            conn.execute("CHECKPOINT")
        self.seed_seconds = time.monotonic() - started

    def restore(self) -> None:
        """Take out what a run added, so the next run of this case starts alike."""
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute("DELETE FROM jobs WHERE id > %s", (self.case.background,))
            conn.execute("VACUUM (ANALYZE) jobs")

    def drop(self) -> None:
        with psycopg.connect(self._admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def due_left(self, first_id: int) -> int:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM jobs WHERE id >= %s AND NOT processed", (first_id,)
            ).fetchone()
            return int(row[0]) if row else 0

    def last_processed_at(self, first_id: int) -> float:
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                "SELECT extract(epoch FROM max(processed_at)) FROM jobs WHERE id >= %s",
                (first_id,),
            ).fetchone()
            return float(row[0]) if row and row[0] is not None else float("nan")

    def wait_drained(self, first_id: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.due_left(first_id):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.case.name}: rows still pending after {timeout} s")
            time.sleep(0.5)


def load(url: str, prefix: str, fire_at: dict[int, float]) -> float:
    """COPY the rows in (ids as given); the time the load committed."""
    with psycopg.connect(url) as conn:
        with conn.cursor().copy("COPY jobs (id, topic, payload, fire_at) FROM STDIN") as copy:
            for job_id, due in fire_at.items():
                copy.write_row((job_id, f"{prefix}/{job_id}", f'{{"n":{job_id}}}',
                                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(due))
                                + f".{int(due % 1 * 1e6):06d}+00"))  # fmt: skip
        conn.commit()
        return time.time()


def histogram_quantile(buckets: dict[float, float], quantile: float) -> float:
    """A quantile of a cumulative histogram, interpolated within its bucket (as
    Prometheus' histogram_quantile does); NaN when empty."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if total <= 0:
        return float("nan")
    rank, lower, below = quantile * total, 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            share = (rank - below) / (count - below) if count > below else 1.0
            return lower + (bound - lower) * share
        lower, below = bound, count
    return lower


def run_case(bench: Bench, database: CaseDatabase) -> ScenarioResult:
    """One run: drain DUE_JOBS due rows, then ON_TIME_RATE jobs/s held to their time."""
    case, first = database.case, database.case.background + 1
    prefix = f"bench/scale-{case.name}"
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
    with bench.replicas(1, database_url=database.url) as (replica,):
        claims_before = replica.histogram("jobpub_claim_duration_seconds")
        replica.mark()
        now = time.time()
        drain_at = dict.fromkeys(range(first, first + DUE_JOBS), now - 1.0)
        loaded = load(database.url, prefix, drain_at)
        database.wait_drained(first, timeout=max(120.0, DUE_JOBS / 500))
        elapsed = database.last_processed_at(first) - loaded
        usage = [replica.usage()]
        claims = {
            bound: count - claims_before.get(bound, 0.0)
            for bound, count in replica.histogram("jobpub_claim_duration_seconds").items()
        }
        on_time_first = first + DUE_JOBS
        jobs = int(ON_TIME_RATE * ON_TIME_SECONDS)
        start = time.time() + ON_TIME_LEAD
        timed_at = {on_time_first + i: start + i / ON_TIME_RATE for i in range(jobs)}
        load(database.url, prefix, timed_at)
        database.wait_drained(on_time_first, timeout=ON_TIME_LEAD + ON_TIME_SECONDS + 60)
    subscriber.wait_settled(DUE_JOBS + jobs, timeout=60)
    arrivals = subscriber.stop()
    drained = check_delivery(drain_at, arrivals)
    on_time = check_delivery(timed_at, arrivals)
    database.restore()
    notes = {
        "processed_rows": case.processed,
        "scheduled_rows": case.scheduled,
        "claim_p50_ms": round(histogram_quantile(claims, 0.50) * 1000, 2),
        "claim_p99_ms": round(histogram_quantile(claims, 0.99) * 1000, 2),
        "on_time_p99_ms": on_time.lag_p99_ms,
        "on_time_max_ms": on_time.lag_max_ms,
        "on_time_early": on_time.early,
        "on_time_lost": on_time.lost,
        "seed_s": round(database.seed_seconds, 1),
    }
    return ScenarioResult(f"scale-{case.name}", 1, DUE_JOBS, round(DUE_JOBS / elapsed), drained,
                          usage, notes)  # fmt: skip


def run(bench: Bench, cases: list[ScaleCase], repeat: int) -> list[ScenarioResult]:
    """Seed every case, then `repeat` rounds of one run per case; the median per case."""
    databases = [CaseDatabase(bench, case) for case in cases]
    try:
        for database in databases:
            print(f"  seeding {database.case.name} …", file=sys.stderr)
            database.create()
            print(f"  seeded {database.case.name} in {database.seed_seconds:.0f} s",
                  file=sys.stderr)  # fmt: skip
        runs: dict[str, list[ScenarioResult]] = {case.name: [] for case in cases}
        for round_number in range(1, repeat + 1):
            for database in databases:
                result = run_case(bench, database)
                runs[database.case.name].append(result)
                print(f"  round {round_number} {result.name}: {result.jobs_per_s:,} jobs/s, "
                      f"claim p99 {result.notes['claim_p99_ms']} ms, on-time p99 "
                      f"{result.notes['on_time_p99_ms']} ms", file=sys.stderr)  # fmt: skip
    finally:
        for database in databases:
            database.drop()
    return [_median(attempts, baseline=runs["empty"]) for attempts in runs.values()]


def _median(attempts: list[ScenarioResult], baseline: list[ScenarioResult]) -> ScenarioResult:
    """The run with the median rate, with the median of each figure across the runs."""
    ordered = sorted(attempts, key=lambda r: r.jobs_per_s)
    chosen = dataclasses.replace(ordered[len(ordered) // 2], notes=dict(ordered[0].notes))
    for key in ("claim_p50_ms", "claim_p99_ms", "on_time_p99_ms", "on_time_max_ms"):
        chosen.notes[key] = round(statistics.median(r.notes[key] for r in attempts), 2)
    for key in ("on_time_early", "on_time_lost"):
        chosen.notes[key] = sum(r.notes[key] for r in attempts)
    chosen.notes["runs_jobs_per_s"] = [r.jobs_per_s for r in attempts]
    empty = statistics.median(r.jobs_per_s for r in baseline)
    chosen.notes["of_empty"] = round(statistics.median(r.jobs_per_s for r in attempts) / empty, 3)
    return chosen


def render_chart(results: list[ScenarioResult], path: Path) -> None:
    """Drain rate against the empty table, and claim and on-time p99, per case."""
    import matplotlib  # noqa: PLC0415 - plotting only when a chart is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = [r.name.removeprefix("scale-") for r in results]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    rates = [r.jobs_per_s for r in results]
    left.barh(names, rates, color="#4878a8")
    left.axvline(0.9 * rates[0], color="#c44e52", linestyle="--", linewidth=1,
                 label="90% of empty")  # fmt: skip
    for index, r in enumerate(results):
        left.text(r.jobs_per_s, index, f" {r.jobs_per_s:,} ({r.notes['of_empty']:.0%})",
                  va="center", fontsize=8)  # fmt: skip
    left.set_xlabel("jobs/s, one replica draining 100,000 due rows (median)")
    left.set_title("Drain by table contents")
    left.invert_yaxis()
    left.legend(loc="lower right")
    width = 0.4
    positions = range(len(results))
    right.barh([p - width / 2 for p in positions], [r.notes["claim_p99_ms"] for r in results],
               height=width, color="#8c8c8c", label="claim p99 (drain)")  # fmt: skip
    right.barh([p + width / 2 for p in positions], [r.notes["on_time_p99_ms"] for r in results],
               height=width, color="#6a9f58", label="on-time p99 at 1,000 jobs/s")  # fmt: skip
    right.axvline(10, color="#c44e52", linestyle="--", linewidth=1, label="target 10 ms")
    right.set_yticks(list(positions), names)
    right.invert_yaxis()
    right.set_xlabel("ms")
    right.set_title("Claim and on-time p99")
    right.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def shortfalls(results: list[ScenarioResult]) -> Iterator[str]:
    """The targets: every case ≥ 90% of the empty table's drain, on-time p99 ≤ 10 ms."""
    for r in results:
        notes: dict[str, Any] = r.notes
        if notes["of_empty"] < 0.9:
            yield f"{r.name}: drain {notes['of_empty']:.0%} of the empty table's"
        if notes["on_time_p99_ms"] > 10:
            yield f"{r.name}: on-time p99 {notes['on_time_p99_ms']} ms"
