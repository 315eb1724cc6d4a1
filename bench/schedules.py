"""`python -m bench schedules`: 10,000 schedules with the same occurrence second.

Each schedule is a 6-field cron expression naming one second a little ahead (UTC), so
each fires once in the run. The replicas materialise the occurrences ahead of time (as
they would at 09:00 every day) and publish them on time. Reported: the subscriber's lag
after the occurrence (the target: p99 <= 50 ms without spread), and where it goes:
jobpub's hand-off (jobpub_publish_lag_seconds: fire_at to the publish call) against
the rest (the broker's fan-out to the subscriber).
"""

from __future__ import annotations

import time

import psycopg

from bench.harness import Bench, ReplicaProcess, ScenarioResult, VerifyingSubscriber, check_delivery

# Seconds from the INSERT to the occurrence: the materialisation of 10,000 schedules
# (20 passes of 500) must finish before it, with room on a busy machine.
LEAD = 40.0


def schedules(bench: Bench, count: int, replicas: int = 1) -> ScenarioResult:
    prefix = "bench/schedules"
    bench.reset()
    with psycopg.connect(bench.db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM schedules")
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
    with bench.replicas(replicas) as running:
        for replica in running:
            replica.mark()
        occurrence = float(int(time.time() + LEAD))
        when = time.gmtime(occurrence)
        cron = f"{when.tm_sec} {when.tm_min} {when.tm_hour} * * *"
        with psycopg.connect(bench.db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO schedules (name, topic, payload, cron) "
                "SELECT 'bench-' || i, %s || '/' || i, '{}', %s FROM generate_series(1, %s) i",
                (prefix, cron, count),
            )
        inserted = time.time()
        materialised_after = _wait_materialised(bench, count, occurrence)
        materialised = materialised_after - inserted
        bench.wait_drained(timeout=LEAD + 120)
        handoff = _handoff_percentiles(running)
        usage = [replica.usage() for replica in running]
    subscriber.wait_settled(count, timeout=60)
    arrivals = subscriber.stop()
    delivery = check_delivery(dict.fromkeys(range(1, count + 1), occurrence), arrivals)
    spread_ms = _arrival_span_ms(arrivals.times)
    with psycopg.connect(bench.db_url) as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.99) WITHIN GROUP ("
            "  ORDER BY extract(epoch FROM processed_at - fire_at) * 1000),"
            " count(DISTINCT schedule_name), count(*) FROM jobs"
        ).fetchone()
    if row is None:
        raise RuntimeError("no percentile row")
    return ScenarioResult(
        f"schedules-{replicas}",
        replicas,
        count,
        round(count / max(delivery.lag_max_ms / 1000, 1e-3)),
        delivery,
        usage,
        {
            "materialised_s": round(materialised, 2),
            "materialised_before_occurrence_s": round(occurrence - materialised_after, 2),
            "handoff_lag_le_ms": handoff,
            "marked_p99_ms": round(float(row[0]), 1),
            "rows": int(row[2]),
            "schedules_with_rows": int(row[1]),
            "first_to_last_arrival_ms": spread_ms,
            "target_p99_ms": 50,
            "target_met": delivery.lag_p99_ms <= 50 and delivery.lost == 0,
        },
    )


def _wait_materialised(bench: Bench, count: int, occurrence: float) -> float:
    """Until every schedule has its row; the time.time() it had them."""
    with psycopg.connect(bench.db_url, autocommit=True) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM jobs").fetchone()
            if row and row[0] >= count:
                return time.time()
            if time.time() > occurrence + 5:
                raise RuntimeError(f"only {row[0] if row else 0} of {count} rows materialised")
            time.sleep(0.2)


def _handoff_percentiles(replicas: list[ReplicaProcess]) -> dict[str, float]:
    """Bucket bounds holding 50/95/99% of jobpub's hand-off lags, over all replicas."""
    merged: dict[float, float] = {}
    for replica in replicas:
        for bound, cumulative in replica.histogram("jobpub_publish_lag_seconds").items():
            merged[bound] = merged.get(bound, 0.0) + cumulative
    total = merged.get(float("inf"), 0.0)
    result = {}
    for share in (0.5, 0.95, 0.99):
        bound = next((b for b in sorted(merged) if merged[b] >= share * total), float("inf"))
        result[f"p{round(share * 100)}"] = bound * 1000
    return result


def _arrival_span_ms(times: dict[int, list[float]]) -> float:
    firsts = [min(t) for t in times.values() if t]
    return round((max(firsts) - min(firsts)) * 1000, 1) if firsts else float("nan")
