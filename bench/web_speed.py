"""`python -m bench web-speed`: how fast `jobpub web` answers on a table of 10 million rows.

A database of its own (jobpub_bench_web), seeded once with a kept table's mix: mostly
published rows over the last 6 days, some expired and dead among them, pending rows
scheduled ahead, a few due ones, five topic families; before each run the newest
published rows are moved to the last 6 minutes at 1,000/s, a busy fleet's traffic.
`--reuse` keeps it between runs (seeding 10M rows takes minutes) and only migrates it
(new indexes are built on the live table). Then `jobpub web` runs as a
subprocess with a token, and each endpoint is requested over HTTP, one keep-alive
connection, `--requests` times after a warm-up; p50, p95 and max per endpoint, judged
against the issue's targets (jobs list p95 <= 200 ms, /api/stats p95 <= 100 ms); the
overview's hour of history (`?history=true`) is timed too, with no target.
"""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import psycopg

from bench.harness import Bench, ScenarioResult
from testbed.broker import free_port

DATABASE = "jobpub_bench_web"
ROWS = 10_000_000
REQUESTS = 50
WARM_UP = 5
# An endpoint far off its target (a sort of the whole table takes seconds) stops being
# timed after this long: enough requests to know it is slow, not an hour of them.
BUDGET_S = 60.0
TOKEN = "bench-web-speed-token-0123456789"  # noqa: S105 - the bench's own local server
TOPICS = ("sensors", "billing", "alerts", "reports", "devices")
LIST_TARGET_MS = 200.0
STATS_TARGET_MS = 100.0
SEED_CHUNK = 1_000_000


@dataclass(frozen=True)
class SeedPlan:
    """How many rows of each kind a table of `rows` rows gets, and where they sit.

    Ids 1..settled are the old rows, published in id order over the last 6 days; every
    `dead_every`-th of them is dead instead and every `expired_every`-th (offset by one)
    expired. Then `due` pending rows already late, then `ahead` pending rows due over
    the next day: the newest ids, as a producer adds them.
    """

    rows: int
    settled: int
    due: int
    ahead: int
    dead_every: int = 200  # 0.5% of the old rows
    expired_every: int = 50  # 2% of them

    @property
    def dead(self) -> int:
        return self.settled // self.dead_every

    @property
    def expired(self) -> int:
        # ids ≡ 1 (mod expired_every), unless also ≡ 0 (mod dead_every): never both, as
        # dead_every is a multiple of expired_every
        return (self.settled + self.expired_every - 1) // self.expired_every

    @property
    def published(self) -> int:
        return self.settled - self.dead - self.expired

    @property
    def pending(self) -> int:
        return self.due + self.ahead


def plan(rows: int) -> SeedPlan:
    """3% pending scheduled ahead, 0.01% due now, the rest settled."""
    if rows < 1_000:
        raise ValueError(f"web-speed needs at least 1,000 rows, not {rows:,}")
    ahead = rows * 3 // 100
    due = max(1, rows // 10_000)
    return SeedPlan(rows=rows, settled=rows - ahead - due, due=due, ahead=ahead)


# One chunk of old rows, ids first..last: published (processed_at a few ms after
# fire_at), expired or dead as SeedPlan says. `state` is given so the state trigger
# has nothing to correct.
_SEED_SETTLED: Final = """
INSERT INTO jobs (id, topic, payload, fire_at, processed, processed_at, failed_at,
                  expired_at, attempts, last_error, state)
SELECT g, topic, '{"n":' || g || '}', fire_at,
       kind <> 'dead', CASE WHEN kind <> 'dead' THEN fire_at + interval '4 ms' END,
       CASE WHEN kind = 'dead' THEN fire_at + interval '30 s' END,
       CASE WHEN kind = 'expired' THEN fire_at END,
       CASE WHEN kind = 'dead' THEN 5 ELSE 0 END,
       CASE WHEN kind = 'dead' THEN 'broker refused: not authorized' END, kind
FROM (SELECT g,
             (%(topics)s::text[])[g %% %(families)s + 1] || '/' || (g %% 1000) || '/cmd' AS topic,
             now() - interval '6 days' + g * (interval '6 days' / %(settled)s) AS fire_at,
             CASE WHEN g %% %(dead_every)s = 0 THEN 'dead'
                  WHEN g %% %(expired_every)s = 1 THEN 'expired'
                  ELSE 'published' END AS kind
      FROM generate_series(%(first)s, %(last)s) AS g) AS rows
"""

# The pending rows: `due` late by up to an hour, then `ahead` over the next day.
_SEED_PENDING: Final = """
INSERT INTO jobs (id, topic, payload, fire_at, state)
SELECT g, (%(topics)s::text[])[g %% %(families)s + 1] || '/' || (g %% 1000) || '/cmd',
       '{"n":' || g || '}',
       CASE WHEN g < %(ahead_first)s
            THEN now() - interval '1 hour' * (%(ahead_first)s - g) / %(due)s
            ELSE now() + interval '10 minutes'
                 + (g - %(ahead_first)s) * (interval '1 day' / %(ahead)s) END,
       'pending'
FROM generate_series(%(first)s, %(last)s) AS g
"""


# Each run: the newest published rows made the last minutes' traffic, `rate` per second
# up to now, so the rate and the overview read what a busy system's table holds (the
# seed's rows age between runs).
_REFRESH_RECENT = """
UPDATE jobs
SET fire_at = now() - (%(last)s - id) * (interval '1 second' / %(rate)s),
    processed_at = now() - (%(last)s - id) * (interval '1 second' / %(rate)s)
                   + interval '4 ms'
WHERE id > %(last)s - %(recent)s AND id <= %(last)s AND state = 'published'
"""

RECENT_RATE = 1_000  # published per second in the last RECENT_S, as a busy fleet
RECENT_S = 360


class WebDatabase:
    """The seeded database, kept between runs with `--reuse`."""

    def __init__(self, bench: Bench, rows: int, name: str = DATABASE) -> None:
        self.plan = plan(rows)
        self.name = name
        self.url = bench.db_url.rpartition("/")[0] + "/" + name
        self._admin_url = bench.db_url
        self._bench = bench
        self.seed_seconds = 0.0

    def prepare(self, *, reuse: bool) -> None:
        """Reuse the table if asked and it holds this plan's rows, else seed it afresh;
        migrate either way (a reused table gets new migrations, live)."""
        if not (reuse and self._seeded_rows() == self.plan.rows):
            self._create()
            self._migrate()
            self._seed()
        else:
            self._migrate()
            print(f"  reusing {self.name} ({self.plan.rows:,} rows)", file=sys.stderr)
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(_REFRESH_RECENT, {"last": self.plan.settled, "rate": RECENT_RATE,
                                           "recent": RECENT_RATE * RECENT_S})  # fmt: skip
            # Apart, as autovacuum runs them: ANALYZE within VACUUM leaves the indexes'
            # sizes (the pending and dead estimates) as VACUUM found them.
            conn.execute("VACUUM jobs")
            conn.execute("ANALYZE jobs")
            conn.execute("CHECKPOINT")

    def _seeded_rows(self) -> int | None:
        try:
            with psycopg.connect(self.url, connect_timeout=5) as conn:
                row = conn.execute("SELECT max(id) FROM jobs").fetchone()
        except psycopg.Error:
            return None
        return int(row[0]) if row and row[0] is not None else None

    def _create(self) -> None:
        with psycopg.connect(self._admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.name}"')

    def _migrate(self) -> None:
        subprocess.run([self._bench.python, "-m", "jobpub", "migrate"],
                       env=self._bench.env(database_url=self.url), check=True,
                       capture_output=True)  # fmt: skip

    def _seed(self) -> None:
        p = self.plan
        common = {"topics": list(TOPICS), "families": len(TOPICS), "settled": p.settled,
                  "dead_every": p.dead_every, "expired_every": p.expired_every,
                  "due": p.due, "ahead": p.ahead, "ahead_first": p.settled + p.due + 1}  # fmt: skip
        started = time.monotonic()
        with psycopg.connect(self.url, autocommit=True) as conn:
            for first in range(1, p.settled + 1, SEED_CHUNK):
                last = min(first + SEED_CHUNK - 1, p.settled)
                conn.execute(_SEED_SETTLED, {**common, "first": first, "last": last})
                print(f"  seeded {last:,} of {p.rows:,} rows "
                      f"({time.monotonic() - started:.0f} s)", file=sys.stderr)  # fmt: skip
            conn.execute(_SEED_PENDING, {**common, "first": p.settled + 1, "last": p.rows})
            conn.execute("SELECT setval(pg_get_serial_sequence('jobs', 'id'), %s)", (p.rows,))
        self.seed_seconds = time.monotonic() - started
        print(f"  seeded {p.rows:,} rows in {self.seed_seconds:.0f} s", file=sys.stderr)

    def middle(self) -> tuple[datetime, int]:
        """A (fire_at, id) halfway through the table: a deep page's cursor."""
        with psycopg.connect(self.url) as conn:
            row = conn.execute(
                "SELECT fire_at, id FROM jobs WHERE id = %s", (self.plan.settled // 2,)
            ).fetchone()
        assert row is not None  # noqa: S101 - the seed wrote every id
        return row[0], int(row[1])

    def load_average(self) -> str:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())


@contextmanager
def web_server(database_url: str, log_path: Path) -> Iterator[int]:
    """`jobpub web` on a free port with a token, until the block ends; yields the port.

    This interpreter, not the bench's runtime venv: that one has no web extra."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPUB_")}
    env.update(JOBPUB_DATABASE_URL=database_url, JOBPUB_WEB_HOST="127.0.0.1",
               JOBPUB_WEB_PORT=str(port), JOBPUB_WEB_TOKEN=TOKEN,
               JOBPUB_LOG_FORMAT="json")  # fmt: skip
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "jobpub", "web"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        try:
            _wait_healthy(port, process)
            yield port
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_healthy(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"jobpub web exited with {process.returncode} before it answered")
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"jobpub web did not answer /healthz within {timeout:g} s")


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    params: dict[str, str]
    target_ms: float | None


def endpoints(deep_cursor: str) -> list[Endpoint]:
    jobs = "/api/jobs"
    return [
        Endpoint("stats", "/api/stats", {}, STATS_TARGET_MS),
        Endpoint("stats-history", "/api/stats", {"history": "true"}, None),
        Endpoint("jobs", jobs, {}, LIST_TARGET_MS),
        Endpoint("jobs-pending", jobs, {"state": "pending"}, LIST_TARGET_MS),
        Endpoint("jobs-dead", jobs, {"state": "dead"}, LIST_TARGET_MS),
        Endpoint("jobs-published", jobs, {"state": "published"}, LIST_TARGET_MS),
        Endpoint("jobs-topic", jobs, {"topic": f"{TOPICS[2]}/"}, LIST_TARGET_MS),
        Endpoint("jobs-deep", jobs, {"cursor": deep_cursor}, LIST_TARGET_MS),
    ]


def time_requests(port: int, endpoint: Endpoint, requests: int, warm_up: int,
                  budget_s: float = BUDGET_S) -> list[float]:  # fmt: skip
    """Milliseconds per request, request sent to body read, over one keep-alive connection;
    fewer than `requests` if they take more than `budget_s` in all (at least one)."""
    target = endpoint.path + ("?" + urlencode(endpoint.params) if endpoint.params else "")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    timings: list[float] = []
    deadline = time.monotonic() + budget_s
    try:
        for index in range(warm_up + requests):
            if timings and time.monotonic() > deadline:
                break
            started = time.perf_counter()
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
            body = response.read()
            elapsed = (time.perf_counter() - started) * 1000
            if response.status != 200:
                raise RuntimeError(f"{endpoint.name}: HTTP {response.status}: {body[:300]!r}")
            if index >= warm_up or time.monotonic() > deadline:
                timings.append(elapsed)
    finally:
        connection.close()
    return timings


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), interpolated between the closest ranks."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarise(endpoint: Endpoint, timings: list[float], sample: Any) -> ScenarioResult:
    notes: dict[str, Any] = {
        "path": endpoint.path + ("?" + urlencode(endpoint.params) if endpoint.params else ""),
        "p50_ms": round(percentile(timings, 50), 1),
        "p95_ms": round(percentile(timings, 95), 1),
        "max_ms": round(max(timings), 1),
        "target_p95_ms": endpoint.target_ms,
        "requests": len(timings),
    }
    if endpoint.path == "/api/stats":
        notes["counts"] = sample["counts"]
        notes["published_per_s"] = sample["published_per_s"]
        notes["rate_window_s"] = sample["rate_window_s"]
    else:
        notes["rows"] = len(sample["jobs"])
    return ScenarioResult(f"web-{endpoint.name}", 0, len(timings), 0, None, [], notes)


def _sample(port: int, endpoint: Endpoint) -> Any:
    target = endpoint.path + ("?" + urlencode(endpoint.params) if endpoint.params else "")
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", target, headers={"Authorization": f"Bearer {TOKEN}"})
        return json.loads(connection.getresponse().read())
    finally:
        connection.close()


def measure(bench: Bench, rows: int, requests: int, *, reuse: bool) -> list[ScenarioResult]:
    from jobpub.web.api.jobs import encode_cursor  # noqa: PLC0415 - the API's own format

    database = WebDatabase(bench, rows)
    database.prepare(reuse=reuse)
    deep = encode_cursor(database.middle())
    results = []
    with web_server(database.url, bench.work / "web.log") as port:
        for endpoint in endpoints(deep):
            timings = time_requests(port, endpoint, requests, WARM_UP)
            result = summarise(endpoint, timings, _sample(port, endpoint))
            result.notes["load_average"] = database.load_average()
            results.append(result)
            print(f"  {result.name}: p50 {result.notes['p50_ms']} ms, p95 "
                  f"{result.notes['p95_ms']} ms, max {result.notes['max_ms']} ms",
                  file=sys.stderr)  # fmt: skip
    if results:
        results[0].notes["table_rows"] = rows
        results[0].notes["seed_s"] = round(database.seed_seconds, 1)
    return results


def shortfalls(results: list[ScenarioResult]) -> Iterator[str]:
    for r in results:
        if r.notes["target_p95_ms"] is not None and r.notes["p95_ms"] > r.notes["target_p95_ms"]:
            yield f"{r.name}: p95 {r.notes['p95_ms']} ms > {r.notes['target_p95_ms']:g} ms"


def render_chart(results: list[ScenarioResult], path: Path) -> None:
    """p50, p95 and max per endpoint, with each one's p95 target."""
    import matplotlib  # noqa: PLC0415 - plotting only when a chart is written

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = [r.name.removeprefix("web-") for r in results]
    figure, axes = plt.subplots(figsize=(9, 0.6 * len(results) + 1.5))
    height = 0.27
    for offset, key, color in ((-height, "p50_ms", "#6a9f58"), (0.0, "p95_ms", "#4878a8"),
                               (height, "max_ms", "#8c8c8c")):  # fmt: skip
        axes.barh([i + offset for i in range(len(results))], [r.notes[key] for r in results],
                  height=height, color=color, label=key.removesuffix("_ms"))  # fmt: skip
    for index, r in enumerate(results):
        target = r.notes["target_p95_ms"]
        if target is not None:
            axes.plot([target, target], [index - 0.45, index + 0.45], color="#c44e52",
                      linestyle="--", linewidth=1)  # fmt: skip
        axes.text(r.notes["max_ms"], index + height, f" {r.notes['p95_ms']:g} ms p95",
                  va="center", fontsize=8)  # fmt: skip
    axes.set_xscale("log")  # a few ms beside seconds, before a fix
    axes.set_yticks(range(len(results)), names)
    axes.invert_yaxis()
    axes.set_xlabel(f"ms per request, {results[0].notes.get('table_rows', 0):,}-row table "
                    "(dashed: p95 target)")  # fmt: skip
    axes.set_title("jobpub web answer times")
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
