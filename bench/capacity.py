"""`python -m bench capacity`: CPU per thousand jobs of a replica, PostgreSQL and Mosquitto.

One replica publishes a steady stream (rows loaded ahead with COPY, falling due evenly
at each rate), and the CPU each process spent in the steady middle of the stream is read
from /proc: the replica, the bench database's PostgreSQL backends (the replica's pooled
sessions) and the bench's Mosquitto. A full drain gives the same figures at saturation,
and an idle replica its floor. Rates are run interleaved, `repeat` times each, because
the machine is shared: the report carries every run and the median per case.

Not counted: the producers' INSERTs or COPY (loaded before the window), PostgreSQL's
shared background processes (WAL writer, checkpointer, autovacuum: they serve every
database on the server, other work's too), and the subscriber (mosquitto_sub).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import psycopg

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from bench.harness import (
    CLOCK_TICKS,
    Bench,
    ReplicaProcess,
    ScenarioResult,
    VerifyingSubscriber,
    check_delivery,
)

RATES = (1_000, 5_000)
# The edges of a stream are start-up and tail; the window is the steady middle.
WINDOW_MARGIN_S = 2.0
# Rows fall due this long after the load commits, so the COPY is outside the window.
LEAD_S = 3.0
SATURATED_JOBS = 50_000
STEADY_SECONDS = 20.0
IDLE_SECONDS = 10.0

# The bench database's client sessions: the replica's pool (the admin connection that
# asks is on another database, so it is not among them).
BACKEND_PIDS = """
SELECT pid FROM pg_stat_activity
WHERE datname = %(database)s AND backend_type = 'client backend'
"""


@dataclass
class CpuSnapshot:
    """CPU seconds so far of the replica, each PostgreSQL backend and the broker."""

    replica: float
    backends: dict[int, float]
    broker: float
    published: float
    at: float


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc; 0 for one that has gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def snapshot(bench: Bench, replica: ReplicaProcess, admin_url: str) -> CpuSnapshot:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        pids = [row[0] for row in conn.execute(BACKEND_PIDS, {"database": bench.db_name})]
    broker = bench.broker.process
    if broker is None:
        raise RuntimeError("the bench broker is not running")
    return CpuSnapshot(
        replica=process_cpu_seconds(replica.process.pid),
        backends={pid: process_cpu_seconds(pid) for pid in pids},
        broker=process_cpu_seconds(broker.pid),
        published=replica.metric("jobpub_jobs_published_total"),
        at=time.monotonic(),
    )


def spent(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """Per thousand jobs published between the snapshots, and cores used, per process.

    A backend that opened during the window counts from 0: the pool opens sessions on
    demand, and a new session's CPU so far is all within the window.
    """
    jobs = after.published - before.published
    seconds = after.at - before.at
    postgres = sum(cpu - before.backends.get(pid, 0.0) for pid, cpu in after.backends.items())
    used = {
        "replica": after.replica - before.replica,
        "postgres": postgres,
        "mosquitto": after.broker - before.broker,
    }
    figures = {"jobs": jobs, "seconds": round(seconds, 2), "jobs_per_s": round(jobs / seconds)}
    for name, cpu in used.items():
        figures[f"{name}_cores"] = round(cpu / seconds, 3)
        figures[f"{name}_cpu_ms_per_1000"] = round(1000 * cpu / jobs * 1000, 1) if jobs else 0.0
    return figures


def steady(bench: Bench, admin_url: str, rate: int, seconds: float) -> ScenarioResult:
    """`rate` jobs/s for `seconds`, one replica; CPU over the steady middle."""
    name = f"steady-{rate}"
    prefix = f"bench/{name}"
    bench.reset()
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
    jobs = round(rate * seconds)
    with bench.replicas(1) as running:
        replica = running[0]
        start = time.time() + LEAD_S
        fire_at = {i: start + (i - 1) / rate for i in range(1, jobs + 1)}
        bench.load(prefix, fire_at)
        _sleep_until(start + WINDOW_MARGIN_S)
        replica.mark()
        before = snapshot(bench, replica, admin_url)
        _sleep_until(start + seconds - WINDOW_MARGIN_S)
        after = snapshot(bench, replica, admin_url)
        usage = [replica.usage()]
        bench.wait_drained(timeout=seconds + 60)
    subscriber.wait_settled(jobs, timeout=30)
    delivery = check_delivery(fire_at, subscriber.stop())
    notes = {"rate_per_s": rate, **spent(before, after)}
    return ScenarioResult(name, 1, jobs, rate, delivery, usage, notes)


def saturated(bench: Bench, admin_url: str, jobs: int) -> ScenarioResult:
    """`jobs` rows all due at once: one replica as fast as it goes, CPU over the drain."""
    name = "saturated"
    prefix = f"bench/{name}"
    bench.reset()
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
    with bench.replicas(1) as running:
        replica = running[0]
        replica.mark()
        before = snapshot(bench, replica, admin_url)
        now = time.time()
        fire_at = dict.fromkeys(range(1, jobs + 1), now - 1.0)
        loaded = bench.load(prefix, fire_at)
        bench.wait_drained(timeout=max(120.0, jobs / 500))
        after = snapshot(bench, replica, admin_url)
        usage = [replica.usage()]
        elapsed = bench.last_processed_at() - loaded
    subscriber.wait_settled(jobs, timeout=60)
    delivery = check_delivery(fire_at, subscriber.stop())
    # The window includes the COPY and up to half a second of wait_drained's polling
    # after the last row: the rate comes from processed_at, the CPU per job stays exact.
    return ScenarioResult(name, 1, jobs, round(jobs / elapsed), delivery, usage,
                          spent(before, after))  # fmt: skip


def idle(bench: Bench, admin_url: str, seconds: float) -> ScenarioResult:
    """An empty table: the replica's floor of CPU and memory."""
    bench.reset()
    with bench.replicas(1) as running:
        replica = running[0]
        replica.mark()
        before = snapshot(bench, replica, admin_url)
        time.sleep(seconds)  # the measurement is the interval itself
        after = snapshot(bench, replica, admin_url)
        usage = [replica.usage()]
    figures = spent(before, after)
    notes = {key: value for key, value in figures.items() if key.endswith("_cores")}
    return ScenarioResult("idle", 1, 0, 0, None, usage, {"seconds": seconds, **notes})


def measure(bench: Bench, admin_url: str, *, repeat: int, seconds: float = STEADY_SECONDS,
            idle_seconds: float = IDLE_SECONDS) -> list[ScenarioResult]:  # fmt: skip
    """Every case `repeat` times, interleaved; each case's median run, all runs in notes."""
    runs: dict[str, list[ScenarioResult]] = {}
    for _ in range(repeat):
        runs.setdefault("idle", []).append(idle(bench, admin_url, idle_seconds))
        for rate in RATES:
            result = steady(bench, admin_url, rate, seconds)
            runs.setdefault(result.name, []).append(result)
        runs.setdefault("saturated", []).append(saturated(bench, admin_url, SATURATED_JOBS))
    return [median_of(attempts) for attempts in runs.values()]


def median_of(attempts: list[ScenarioResult]) -> ScenarioResult:
    """The run with the median total CPU per thousand jobs (or idle cores), with every run's
    per-process figures and their medians in its notes."""
    keys = [k for k in attempts[0].notes if k.endswith(("_cpu_ms_per_1000", "_cores"))]

    def total(result: ScenarioResult) -> float:
        return sum(float(result.notes[k]) for k in keys if k.endswith("_cpu_ms_per_1000")) or sum(
            float(result.notes[k]) for k in keys
        )

    chosen = sorted(attempts, key=total)[len(attempts) // 2]
    for key in keys:
        values = [float(r.notes[key]) for r in attempts]
        chosen.notes[f"{key}_runs"] = values
        chosen.notes[f"{key}_median"] = round(statistics.median(values), 3)
    chosen.notes["peak_rss_mib_runs"] = [u.peak_rss_mib for r in attempts for u in r.usage]
    return chosen


def _sleep_until(moment: float) -> None:
    """Wait for a point in the stream: the window is defined by the schedule itself."""
    delay = moment - time.time()
    if delay > 0:
        time.sleep(delay)


def render_chart(results: list[ScenarioResult], path: Path) -> None:
    """CPU milliseconds per thousand jobs of each process, per case (medians)."""
    cases = [r for r in results if "replica_cpu_ms_per_1000_median" in r.notes]
    processes = ("replica", "postgres", "mosquitto")
    colours = ("#4878a8", "#6a9f58", "#d1885c")
    figure, axes = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(processes)
    for offset, (process, colour) in enumerate(zip(processes, colours, strict=True)):
        values = [float(r.notes[f"{process}_cpu_ms_per_1000_median"]) for r in cases]
        positions = [index + offset * width for index in range(len(cases))]
        axes.bar(positions, values, width, label=process, color=colour)
        for x, value in zip(positions, values, strict=True):
            axes.text(x, value, f"{value:.0f}", ha="center", va="bottom", fontsize=8)
    axes.set_xticks([index + width for index in range(len(cases))],
                    [f"{r.name}\n({r.jobs_per_s:,} jobs/s)" for r in cases])  # fmt: skip
    axes.set_ylabel("CPU ms per 1,000 jobs (median of runs)")
    axes.set_title("CPU per thousand jobs, one replica, QoS 1, shared 2-core machine")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
