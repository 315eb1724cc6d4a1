"""`python -m bench rate`: the fleet-wide rate limit, and what pauses cost a claim.

Rate: 10,000 due rows under JOBPUB_RATE_LIMIT=1000 should take 10 s ± 15% with 4
replicas and with 1. Pauses: the claim statement and a drain with no filter and with 100
filters matching none of the rows, interleaved round by round so the machine's load
(shared, here) falls on both alike; medians are reported.
"""

from __future__ import annotations

import json
import statistics
import time

import psycopg

from bench import scenarios
from bench.harness import (
    Bench,
    ReplicaProcess,
    ScenarioResult,
    VerifyingSubscriber,
    check_delivery,
)
from jobpub.db import queries

RATE = 1000
JOBS = 10_000
TARGET_S = JOBS / RATE
HEARTBEAT_S = 0.5  # so the replicas count each other quickly after start
FILTERS = 100
CLAIMS_PER_ROUND = 100
CLAIM_TABLE_ROWS = 100_000
DRAIN_JOBS = 50_000


def measure(bench: Bench, repeat: int) -> list[ScenarioResult]:
    results = []
    for replicas in (4, 1):
        runs = [_limited_drain(bench, replicas) for _ in range(repeat)]
        runs.sort(key=lambda r: r.notes["drain_s"])
        chosen = runs[len(runs) // 2]
        chosen.notes["runs_drain_s"] = [r.notes["drain_s"] for r in runs]
        results.append(chosen)
        print(f"  {chosen.name}: {chosen.notes['runs_drain_s']} s", flush=True)
    results.append(_claim_cost(bench, repeat))
    results.extend(_drain_cost(bench, repeat))
    return results


def _limited_drain(bench: Bench, replicas: int) -> ScenarioResult:
    name = f"rate-{replicas}x-{RATE}"
    prefix = f"bench/{name}"
    bench.reset()
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
    with bench.replicas(
        replicas, rate_limit=str(RATE), heartbeat_interval=str(HEARTBEAT_S),
        replica_stale_after=str(HEARTBEAT_S * 10),
    ) as running:  # fmt: skip
        _wait_counted(bench, running)
        for replica in running:
            replica.mark()
        fire_at = dict.fromkeys(range(1, JOBS + 1), time.time() - 1.0)
        loaded = bench.load(prefix, fire_at)
        bench.wait_drained(timeout=TARGET_S * 4)
        elapsed = bench.last_processed_at() - loaded
        usage = [replica.usage() for replica in running]
        throttled = [round(r.metric("jobpub_throttled_seconds_total"), 1) for r in running]
    subscriber.wait_settled(JOBS, timeout=60)
    delivery = check_delivery(fire_at, subscriber.stop())
    within = abs(elapsed - TARGET_S) <= 0.15 * TARGET_S
    return ScenarioResult(name, replicas, JOBS, round(JOBS / elapsed), delivery, usage,
                          {"drain_s": round(elapsed, 2), "target_s": f"{TARGET_S:g} ± 15%",
                           "within_target": within, "throttled_s": throttled})  # fmt: skip


def _wait_counted(bench: Bench, running: list[ReplicaProcess]) -> None:
    """Until every replica has counted the whole fleet (its share is then final)."""
    deadline = time.monotonic() + 30
    while not all(_counted(replica, len(running)) for replica in running):
        if time.monotonic() > deadline:
            raise RuntimeError("replicas did not count each other within 30 s")
        time.sleep(0.1)


def _counted(replica: ReplicaProcess, fleet: int) -> bool:
    for line in reversed(replica.log_path.read_text(errors="replace").splitlines()):
        if '"replicas_counted"' in line:
            return bool(json.loads(line).get("replicas") == fleet)
    return False


def _set_filters(conn: psycopg.Connection[tuple[object, ...]], count: int) -> None:
    conn.execute("DELETE FROM pauses")
    conn.execute(
        "INSERT INTO pauses (filter) SELECT 'site' || i || '/+/valve/#' "
        "FROM generate_series(1, %s) i",
        (count,),
    )
    conn.commit()
    conn.execute("VACUUM ANALYZE pauses")


def _claim_cost(bench: Bench, repeat: int) -> ScenarioResult:
    """The claim statement alone (250 rows, rolled back), 0 vs 100 filters: the server's
    execution time (EXPLAIN ANALYZE), which the client's and the network's noise leave out."""
    bench.reset()
    params = {"limit": 250, "lookahead": 0.02, "consumer_count": 1, "consumer_index": 0,
              "takeover_delay": 30.0, "max_payload_bytes": 262144,
              "batch_max_bytes": 4194304}  # fmt: skip
    medians: dict[int, list[float]] = {0: [], FILTERS: []}
    with psycopg.connect(bench.db_url) as conn:
        conn.execute(
            "INSERT INTO jobs (topic, payload, fire_at) SELECT 'bench/claim/' || i, 'p', "
            "now() - interval '1 min' FROM generate_series(1, %s) i",
            (CLAIM_TABLE_ROWS,),
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE jobs")
        for _ in range(repeat * 4):
            for count in (0, FILTERS):
                conn.autocommit = True
                _set_filters(conn, count)
                conn.autocommit = False
                times = []
                for _ in range(CLAIMS_PER_ROUND):
                    conn.execute(queries.CLAIM_PLAN)
                    plan = conn.execute(
                        "EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + queries.CLAIM_DUE_JOBS,
                        params,
                    ).fetchone()
                    conn.rollback()
                    if plan is None:
                        raise RuntimeError("EXPLAIN returned no plan")
                    times.append(float(plan[0][0]["Execution Time"]))
                medians[count].append(statistics.median(times))
        conn.autocommit = True
        _set_filters(conn, 0)
    none, hundred = statistics.median(medians[0]), statistics.median(medians[FILTERS])
    return ScenarioResult("claim-250-rows-0-vs-100-filters", 0, CLAIMS_PER_ROUND, 0, None, [],
                          {"claim_ms_0_filters": round(none, 3),
                           "claim_ms_100_filters": round(hundred, 3),
                           "added_ms": round(hundred - none, 3),
                           "rounds_ms_0": [round(m, 3) for m in medians[0]],
                           "rounds_ms_100": [round(m, 3) for m in medians[FILTERS]]})  # fmt: skip


def _drain_cost(bench: Bench, repeat: int) -> list[ScenarioResult]:
    """One replica draining 50,000 rows, 0 vs 100 filters, interleaved."""
    runs: dict[int, list[ScenarioResult]] = {0: [], FILTERS: []}
    for _ in range(repeat):
        for count in (0, FILTERS):
            with psycopg.connect(bench.db_url, autocommit=True) as conn:
                _set_filters(conn, count)
            result = scenarios.drain(bench, DRAIN_JOBS, 1, partitioned=False)
            result.name = f"drain-1-{count}-filters"
            runs[count].append(result)
    with psycopg.connect(bench.db_url, autocommit=True) as conn:
        _set_filters(conn, 0)
    chosen = []
    for attempts in runs.values():
        ordered = sorted(attempts, key=lambda r: r.jobs_per_s)
        median = ordered[len(ordered) // 2]
        median.notes["runs_jobs_per_s"] = [r.jobs_per_s for r in attempts]
        chosen.append(median)
    return chosen
