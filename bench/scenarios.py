"""The scenarios: drain, on-time, idle, and the baseline and ceiling beside them."""

from __future__ import annotations

import time

import psycopg

from bench.baseline import run_baseline
from bench.ceiling import run_ceiling
from bench.harness import (
    Bench,
    ScenarioResult,
    VerifyingSubscriber,
    check_delivery,
)

# An idle claim is one transaction of three statements: the planner setting, the claim,
# and the next-wake lookup (jobpub.db.claim.Claimer.claim).
IDLE_CLAIM_STATEMENTS = 3


def drain(bench: Bench, jobs: int, replicas: int, *, partitioned: bool) -> ScenarioResult:
    """`jobs` rows all due at once, loaded with COPY while the replicas idle."""
    name = f"drain-{replicas}{'-partitioned' if partitioned else ''}"
    prefix = f"bench/{name}"
    bench.reset()
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
    with bench.replicas(replicas, partitioned) as running:
        for replica in running:
            replica.mark()
        now = time.time()
        fire_at = dict.fromkeys(range(1, jobs + 1), now - 1.0)
        loaded = bench.load(prefix, fire_at)
        bench.wait_drained(timeout=max(120.0, jobs / 500))
        elapsed = bench.last_processed_at() - loaded
        usage = [replica.usage() for replica in running]
    subscriber.wait_settled(jobs, timeout=60)
    delivery = check_delivery(fire_at, subscriber.stop())
    return ScenarioResult(name, replicas, jobs, round(jobs / elapsed), delivery, usage,
                          {"partitioned": partitioned})  # fmt: skip


def on_time(bench: Bench, jobs: int, spread: float, lead: float) -> ScenarioResult:
    """`jobs` rows spread evenly over `spread` seconds, starting `lead` seconds ahead."""
    prefix = "bench/on-time"
    bench.reset()
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
    with bench.replicas(1) as running:
        running[0].mark()
        start = time.time() + lead
        fire_at = {i: start + (i - 1) * spread / jobs for i in range(1, jobs + 1)}
        bench.load(prefix, fire_at)
        bench.wait_drained(timeout=lead + spread + 60)
        usage = [running[0].usage()]
    subscriber.wait_settled(jobs, timeout=30)
    delivery = check_delivery(fire_at, subscriber.stop())
    return ScenarioResult("on-time", 1, jobs, round(jobs / spread), delivery, usage,
                          {"spread_s": spread, "rate_per_s": round(jobs / spread)})  # fmt: skip


def idle(bench: Bench, seconds: float, probes: int) -> ScenarioResult:
    """An empty table: database load and CPU while idle, then how fast a new row goes out."""
    prefix = "bench/idle"
    bench.reset()
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
    with bench.replicas(1) as running:
        replica = running[0]
        time.sleep(2)  # let start-up settle before measuring
        claims_before = replica.metric("jobpub_claim_duration_seconds_count")
        transactions_before = bench.transactions()
        replica.mark()
        time.sleep(seconds)
        usage = [replica.usage()]
        transactions = bench.transactions() - transactions_before
        claims = replica.metric("jobpub_claim_duration_seconds_count") - claims_before
        fire_at: dict[int, float] = {}
        with psycopg.connect(bench.db_url, autocommit=True) as conn:
            for job_id in range(1, probes + 1):
                row = conn.execute(
                    "INSERT INTO jobs (id, topic, payload, fire_at) "
                    "VALUES (%s, %s, 'probe', now()) RETURNING extract(epoch FROM fire_at)",
                    (job_id, f"{prefix}/{job_id}"),
                ).fetchone()
                if row is None:
                    raise RuntimeError("INSERT … RETURNING returned nothing")
                fire_at[job_id] = float(row[0])
                time.sleep(0.5)
        bench.wait_drained(timeout=30)
    subscriber.wait_settled(probes, timeout=10)
    delivery = check_delivery(fire_at, subscriber.stop())
    notes = {
        "seconds": seconds,
        "transactions_per_s": round(transactions / seconds, 3),
        "claims_per_s": round(claims / seconds, 3),
        "statements_per_s": round(IDLE_CLAIM_STATEMENTS * claims / seconds, 3),
        "new_row_latency_ms_median": delivery.lag_p50_ms,
        "new_row_latency_ms_max": delivery.lag_max_ms,
    }
    return ScenarioResult("idle", 1, probes, 0, delivery, usage, notes)


def baseline(bench: Bench, jobs: int) -> ScenarioResult:
    prefix = "bench/baseline"
    bench.reset()
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
    now = time.time()
    fire_at = dict.fromkeys(range(1, jobs + 1), now - 1.0)
    bench.load(prefix, fire_at)
    elapsed = run_baseline(bench.db_url, bench.broker.port, jobs, timeout=600)
    subscriber.wait_settled(jobs, timeout=30)
    delivery = check_delivery(fire_at, subscriber.stop())
    return ScenarioResult("baseline", 1, jobs, round(jobs / elapsed), delivery)


def ceiling(bench: Bench, jobs: int) -> ScenarioResult:
    prefix = "bench/ceiling"
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
    now = time.time()
    elapsed = run_ceiling(bench.broker.port, prefix, range(1, jobs + 1))
    subscriber.wait_settled(jobs, timeout=60)
    delivery = check_delivery(dict.fromkeys(range(1, jobs + 1), now), subscriber.stop())
    return ScenarioResult("ceiling", 0, jobs, round(jobs / elapsed), delivery)


def retention_drain(bench: Bench, jobs: int, old_rows: int, *, pruning: bool) -> ScenarioResult:
    """`jobs` due rows drained by one replica beside `old_rows` published rows 8-30 days
    old, which that replica prunes meanwhile (JOBPUB_RETENTION of 7 days) or keeps (0)."""
    name = f"retention-{'pruning' if pruning else 'kept'}"
    prefix = f"bench/{name}"
    bench.reset()
    with psycopg.connect(bench.db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (id, topic, payload, fire_at, processed, processed_at)"
            " SELECT g, 'bench/old/' || g, '{\"n\":' || g || '}',"
            " now() - interval '30 days' + g * (interval '22 days' / %(n)s), true,"
            " now() - interval '30 days' + g * (interval '22 days' / %(n)s)"
            " FROM generate_series(1, %(n)s) AS g",
            {"n": old_rows},
        )
        conn.execute("VACUUM (ANALYZE) jobs")
        conn.execute("CHECKPOINT")
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
    retention = str(7 * 86400) if pruning else "0"
    pruned_metric = 'jobpub_jobs_pruned_total{state="published"}'
    with bench.replicas(1, retention=retention) as (replica,):
        if pruning:  # the drain starts once pruning is under way
            deadline = time.monotonic() + 30
            while not replica.metric(pruned_metric) and time.monotonic() < deadline:
                time.sleep(0.05)
        pruned_before = replica.metric(pruned_metric)
        replica.mark()
        fire_at = dict.fromkeys(range(old_rows + 1, old_rows + jobs + 1), time.time() - 1.0)
        loaded = bench.load(prefix, fire_at)
        bench.wait_drained(timeout=max(120.0, jobs / 500))
        elapsed = bench.last_processed_at() - loaded
        usage = [replica.usage()]
        pruned = replica.metric(pruned_metric) - pruned_before
    with psycopg.connect(bench.db_url) as conn:
        row = conn.execute("SELECT count(*) FROM jobs WHERE id <= %s", (old_rows,)).fetchone()
        old_left = int(row[0]) if row else 0
    subscriber.wait_settled(jobs, timeout=60)
    delivery = check_delivery(fire_at, subscriber.stop())
    notes = {
        "old_rows": old_rows,
        "pruned_during_drain": int(pruned),
        "prune_rows_per_s": round(pruned / elapsed),
        "old_rows_left_after": old_left,
    }
    return ScenarioResult(name, 1, jobs, round(jobs / elapsed), delivery, usage, notes)
