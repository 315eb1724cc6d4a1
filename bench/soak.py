"""`python -m bench soak`: a steady stream for a long time; does anything creep?

A producer inserts `rate` jobs/s (one multi-row INSERT every 100 ms, paced by the clock,
rows due at once to 1.9 s ahead), `replicas` replicas publish them under a short
retention (so pruning runs and the table should stop growing), and a subscriber that
is not jobpub's code (`mosquitto_sub`) counts every message by job id. Every 10 s the
bench samples each replica's RSS, the window's claim p99 (the replicas' histograms) and
lag p99 (the subscriber's), the table's size and rows, and the load average; at the
end it judges the samples against the targets (bench.soak_verdicts).

The subscriber's messages are counted as they come, in a byte per job id, so a
30-minute run at 10,000 jobs/s (18 million jobs) holds 18 MB, not every arrival.
"""

from __future__ import annotations

import collections
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg

from bench.harness import Bench, Delivery, ReplicaProcess, ScenarioResult
from bench.scale import histogram_quantile
from bench.soak_verdicts import (
    AHEAD_STEP_S,
    AHEAD_STEPS,
    TICK_S,
    Sample,
    Schedule,
    Verdict,
    batch_size_for,
    rss_times,
    scaled,
    verdicts,
    when,
)

PREFIX = "bench/soak"
SAMPLE_S = 10.0
DEFAULT_RETENTION_S = 120.0
# A short run gets a shorter retention by default, so pruning has run several rounds
# before the last third (replicas prune every 60 s, jobpub.db.retention).
RETENTION_SHARE_OF_SHORT_RUN = 1 / 6
START_LEAD_S = 1.0  # from the replicas' baseline scrape to the first batch
SETTLE_TIMEOUT_S = 120.0
SETTLE_QUIET_S = 15.0  # no new message for this long: the rest is not coming

INSERT_BATCH = """
INSERT INTO jobs (id, topic, payload, fire_at)
SELECT g, %(prefix)s || g, '{"n":' || g || '}',
       to_timestamp(%(inserted_at)s) + (g %% %(steps)s) * make_interval(secs => %(step)s)
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""
TABLE_FIGURES = """
SELECT pg_total_relation_size('jobs'), n_live_tup, n_dead_tup, autovacuum_count + vacuum_count
FROM pg_stat_user_tables WHERE relname = 'jobs'
"""


@dataclass(frozen=True)
class SoakConfig:
    minutes: float
    rate: int
    replicas: int
    retention_s: float

    @property
    def run_s(self) -> float:
        return self.minutes * 60

    @staticmethod
    def default_retention(minutes: float) -> float:
        return min(DEFAULT_RETENTION_S, minutes * 60 * RETENTION_SHARE_OF_SHORT_RUN)


@dataclass
class SoakRun:
    config: SoakConfig
    result: ScenarioResult
    samples: list[Sample]
    verdicts: list[Verdict]
    seconds: dict[str, float] = field(default_factory=dict)  # setup, run, settle

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)


class Producer:
    """Inserts batch after batch, each at its tick; a late batch goes at once (catching
    up), and how late the producer fell is kept."""

    def __init__(self, url: str, schedule: Schedule, batches: int) -> None:
        self.schedule = schedule
        self.batches = batches
        # When each batch was inserted (its rows' fire_at follow from it); appended
        # before the INSERT, so the subscriber never sees a row of an unlisted batch.
        self.inserted_at: list[float] = []
        self.behind_max_s = 0.0
        self.late_batches = 0  # inserted more than a tick after their moment
        self.error: Exception | None = None
        self._url = url
        self._start = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, at: float) -> None:
        """Connect now, insert the first batch at `at`."""
        conn = psycopg.connect(self._url, autocommit=True)
        self._start = at
        self._thread = threading.Thread(target=self._run, args=(conn,), name="soak-producer",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def produced(self) -> int:
        return len(self.inserted_at) * self.schedule.batch_size

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def join(self, timeout: float) -> None:
        if self._thread is None:
            raise RuntimeError("the producer was not started")
        self._thread.join(timeout=timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the producer did not finish within {timeout:.0f} s")
        if self.error is not None:
            raise RuntimeError(f"the producer failed: {self.error}") from self.error

    def _run(self, connection: psycopg.Connection[tuple[Any, ...]]) -> None:
        try:
            with connection as conn:
                for batch in range(self.batches):
                    delay = self._start + batch * TICK_S - time.time()
                    if delay > 0 and self._stop.wait(delay):
                        return
                    self.behind_max_s = max(self.behind_max_s, -delay)
                    self.late_batches += -delay > TICK_S
                    first, last = self.schedule.ids_of(batch)
                    inserted_at = round(time.time(), 6)
                    self.inserted_at.append(inserted_at)
                    conn.execute(INSERT_BATCH, {
                        "prefix": f"{PREFIX}/", "inserted_at": inserted_at, "first": first,
                        "last": last, "steps": AHEAD_STEPS, "step": AHEAD_STEP_S,
                    })  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - raised by join() in the main thread
            self.error = exc


@dataclass
class WindowCounts:
    """What the subscriber saw since the last sample."""

    received: int = 0
    lags_ms: list[float] = field(default_factory=list)


class ArrivalCounter:
    """`mosquitto_sub` at QoS 1 on the soak's topics, each message counted as it comes:
    copies per job id (a byte each, saturating at 255), first-copy lag, early ones."""

    def __init__(self, port: int, capacity: int, schedule: Schedule,
                 inserted_at: list[float]) -> None:  # fmt: skip
        self.copies = bytearray(capacity + 1)  # index = job id; 0 unused
        self.first_seen = 0
        self.duplicated = 0
        self.early = 0
        self.last_arrival = time.monotonic()
        self.error: Exception | None = None  # the reader's, raised by check()
        # Every first copy's lag, in 0.1 ms steps: the run's percentiles without a list
        # of 18 million floats.
        self.lag_tenths_ms: collections.Counter[int] = collections.Counter()
        self._schedule = schedule
        self._inserted_at = inserted_at
        self._window = WindowCounts()
        self._lock = threading.Lock()
        binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
        self._process = subprocess.Popen(
            ["stdbuf", "-oL", binary, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5",
             "-q", "1", "-t", f"{PREFIX}/#", "-F", "%U %t"],
            stdout=subprocess.PIPE,
            env={**os.environ, "TZ": "UTC"},  # else glibc stats /etc/localtime per line
        )  # fmt: skip
        if self._process.stdout is None:
            raise RuntimeError("mosquitto_sub without stdout")
        self._thread = threading.Thread(target=self._read, args=(self._process.stdout,),
                                        name="soak-subscriber-reader", daemon=True)  # fmt: skip
        self._thread.start()

    def _read(self, stream: IO[bytes]) -> None:
        try:
            self._count(stream)
        except Exception as exc:  # noqa: BLE001 - raised by check() in the main thread
            self.error = exc

    def _count(self, stream: IO[bytes]) -> None:
        skip = len(PREFIX) + 1
        for line in stream:
            stamp, _, topic = line.partition(b" ")
            if not topic.startswith(PREFIX.encode()):
                continue
            job_id, arrived = int(topic[skip:]), float(stamp)
            with self._lock:
                self.last_arrival = time.monotonic()
                self._window.received += 1
                copies = self.copies[job_id]
                if copies < 255:
                    self.copies[job_id] = copies + 1
                if copies:
                    self.duplicated += 1
                    continue
                self.first_seen += 1
                batch_at = self._inserted_at[self._schedule.batch_of(job_id)]
                lag_ms = (arrived - Schedule.fire_at(job_id, batch_at)) * 1000
                if lag_ms < 0:
                    self.early += 1
                self._window.lags_ms.append(lag_ms)
                self.lag_tenths_ms[math.floor(lag_ms * 10)] += 1

    def check(self) -> None:
        """Raise what stopped the counting, if anything did: its figures would be wrong."""
        if self.error is not None:
            raise RuntimeError(f"the subscriber's counter failed: {self.error}") from self.error

    def take_window(self) -> WindowCounts:
        with self._lock:
            window, self._window = self._window, WindowCounts()
        return window

    def wait_settled(self, expected: int) -> None:
        """Until `expected` jobs arrived once, or nothing came for a while, or timeout."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        while self.first_seen < expected and time.monotonic() < deadline:
            if time.monotonic() - self.last_arrival > SETTLE_QUIET_S:
                return
            time.sleep(0.2)

    def lost(self, produced: int) -> int:
        return self.copies[1 : produced + 1].count(0)

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(timeout=10)
        self._thread.join(timeout=10)


@dataclass
class ReplicaFigures:
    """What one scrape of a replica's /metrics says, for the soak."""

    published: float = 0.0
    pruned: float = 0.0
    claim_buckets: dict[float, float] = field(default_factory=dict)


def parse_metrics(lines: list[str]) -> ReplicaFigures:
    figures = ReplicaFigures()
    for line in lines:
        if line.startswith("jobpub_jobs_published_total "):
            figures.published = float(line.split()[1])
        elif line.startswith('jobpub_jobs_pruned_total{state="published"} '):
            figures.pruned = float(line.rsplit(" ", 1)[1])
        elif line.startswith('jobpub_claim_duration_seconds_bucket{le="'):
            figures.claim_buckets[float(line.split('"')[1])] = float(line.rsplit(" ", 1)[1])
    return figures


def rss_mib(pid: int) -> float:
    """VmRSS now (not the peak); NaN for a process that has gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return float("nan")
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler:
    """One Sample per call: the window since the previous call."""

    def __init__(self, replicas: list[ReplicaProcess], counter: ArrivalCounter,
                 conn: psycopg.Connection[tuple[Any, ...]]) -> None:  # fmt: skip
        self._replicas = replicas
        self._counter = counter
        self._conn = conn
        self._previous = [self._scrape(r) for r in replicas]
        row = conn.execute(TABLE_FIGURES).fetchone()
        self._vacuums_before = int(row[3]) if row else 0  # bench.reset's VACUUM among them

    @staticmethod
    def _scrape(replica: ReplicaProcess) -> ReplicaFigures | None:
        if replica.process.poll() is not None:
            return None
        try:
            return parse_metrics(replica.scrape())
        except OSError:
            return None

    def take(self, at_s: float, produced: int) -> Sample:
        current = [self._scrape(r) for r in self._replicas]
        claims: dict[float, float] = collections.defaultdict(float)
        for before, now in zip(self._previous, current, strict=True):
            if before is None or now is None:
                continue
            for bound, count in now.claim_buckets.items():
                claims[bound] += count - before.claim_buckets.get(bound, 0.0)
        known = [f for f in current if f is not None]
        self._previous = [now or before for before, now in zip(self._previous, current,
                                                                   strict=True)]  # fmt: skip
        window = self._counter.take_window()
        row = self._conn.execute(TABLE_FIGURES).fetchone()
        table_bytes, live, dead, vacuums = row if row else (0, 0, 0, 0)
        lags = sorted(window.lags_ms)
        return Sample(
            at_s=at_s,
            rss_mib=[round(rss_mib(r.process.pid), 2) for r in self._replicas],
            claim_p99_ms=round(histogram_quantile(dict(claims), 0.99) * 1000, 3),
            lag_p99_ms=round(lags[min(len(lags) - 1, int(0.99 * len(lags)))], 2)
            if lags else float("nan"),
            lag_max_ms=round(lags[-1], 2) if lags else float("nan"),
            received=window.received,
            published=int(sum(f.published for f in known)),
            produced=produced,
            pruned=int(sum(f.pruned for f in known)),
            table_bytes=int(table_bytes),
            live_rows=int(live),
            dead_rows=int(dead),
            vacuums=int(vacuums) - self._vacuums_before,
            load_1m=float(Path("/proc/loadavg").read_text().split()[0]),
        )  # fmt: skip


def counted_percentile(counts: collections.Counter[int], share: float) -> float:
    """The nearest-rank percentile of values counted by key (0.1 ms steps here), in the
    keys' unit / 10; NaN if nothing was counted."""
    total = sum(counts.values())
    if not total:
        return float("nan")
    rank = min(total - 1, int(share * total))
    seen = 0
    for key in sorted(counts):
        seen += counts[key]
        if seen > rank:
            return key / 10
    return max(counts) / 10


def run(bench: Bench, config: SoakConfig) -> SoakRun:
    setup_started = time.monotonic()
    bench.reset()
    schedule = Schedule(batch_size_for(config.rate))
    batches = round(config.run_s / TICK_S)
    producer = Producer(bench.db_url, schedule, batches)
    counter = ArrivalCounter(bench.broker.port, batches * schedule.batch_size, schedule,
                             producer.inserted_at)  # fmt: skip
    samples: list[Sample] = []
    try:
        with bench.replicas(config.replicas, retention=str(config.retention_s)) as running, \
                psycopg.connect(bench.db_url, autocommit=True) as conn:  # fmt: skip
            for replica in running:
                replica.mark()
            setting = conn.execute("SHOW autovacuum").fetchone()
            autovacuum = str(setting[0]) if setting else "unknown"
            sampler = Sampler(running, counter, conn)
            start = time.time() + START_LEAD_S
            setup_s = time.monotonic() - setup_started
            producer.start(start)
            for index in range(1, int(config.run_s // SAMPLE_S) + 1):
                _sleep_until(start + index * SAMPLE_S)  # the sampling cadence itself
                counter.check()
                samples.append(sampler.take(index * SAMPLE_S, producer.produced()))
                if index % 6 == 0:
                    _progress(samples[-1])
            producer.join(timeout=config.run_s + 60)
            settle_started = time.monotonic()
            counter.wait_settled(producer.produced())
            settle_s = time.monotonic() - settle_started
            counter.check()
            usage = [replica.usage() for replica in running]
    finally:
        producer.stop()
        counter.stop()
    produced = producer.produced()
    lost = counter.lost(produced)
    checked = verdicts(samples, config.run_s, lost=lost, early=counter.early,
                       duplicated=counter.duplicated)  # fmt: skip
    delivery = Delivery(
        expected=produced,
        received=counter.first_seen + counter.duplicated,
        lost=lost,
        duplicated=counter.duplicated,
        # The soak does not read DUP flags: every copy beyond the first counts here too.
        published_twice=counter.duplicated,
        early=counter.early,
        lag_p50_ms=counted_percentile(counter.lag_tenths_ms, 0.50),
        lag_p95_ms=counted_percentile(counter.lag_tenths_ms, 0.95),
        lag_p99_ms=counted_percentile(counter.lag_tenths_ms, 0.99),
        lag_max_ms=max(counter.lag_tenths_ms, default=0) / 10,
    )
    reference_s, window_s = rss_times(config.run_s)
    notes = {
        "minutes": config.minutes,
        "rate_per_s": schedule.batch_size * round(1 / TICK_S),
        "retention_s": config.retention_s,
        "rss_rule": f"reference at {when(reference_s)}, window from {when(window_s)}"
        + (" (scaled from 5 and 20 of 30 min)" if scaled(config.minutes) else ""),
        "producer_behind_max_s": round(producer.behind_max_s, 3),
        "producer_late_batches": producer.late_batches,
        "autovacuum": autovacuum,
        "verdicts_passed": all(v.passed for v in checked),
    }
    result = ScenarioResult("soak", config.replicas, produced, round(produced / config.run_s),
                            delivery, usage, notes)  # fmt: skip
    seconds = {"setup": round(setup_s, 1), "run": config.run_s, "settle": round(settle_s, 1)}
    return SoakRun(config, result, samples, checked, seconds)


def _progress(sample: Sample) -> None:
    rss = "/".join(f"{v:.1f}" for v in sample.rss_mib)
    print(f"  {sample.at_s / 60:4.1f} min: published {sample.published:,}, RSS {rss} MiB, "
          f"claim p99 {sample.claim_p99_ms} ms, lag p99 {sample.lag_p99_ms} ms, table "
          f"{sample.table_bytes / 2**20:.1f} MiB, load {sample.load_1m}",
          file=sys.stderr, flush=True)  # fmt: skip


def _sleep_until(moment: float) -> None:
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)
