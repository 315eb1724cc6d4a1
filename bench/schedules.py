"""`python -m bench schedules`: 10,000 schedules with the same occurrence second.

Each schedule is a 6-field cron expression naming one second a little ahead (UTC), so
each fires once in the run. The replicas materialise the occurrences ahead of time (as
they would at 09:00 every day) and publish them on time. Reported: the subscriber's lag
after the occurrence (the target: p99 <= 50 ms without spread), and where it goes:
jobpub's hand-off (jobpub_publish_lag_seconds: fire_at to the publish call), the CPU
each process spent on the burst (the broker handles its messages one after another, so
its CPU time is a floor under the spread of arrivals), and the machine's load.
`--trace` adds, from `strace` of the replicas (bench.sendtrace), when their PUBLISH
bytes left and their PUBACKs came back, and three more subscribers (QoS 0, and a shared
subscription of four) to show whether the measuring subscriber holds arrivals back.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from pathlib import Path
from typing import Any

import matplotlib
import psycopg

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from bench.capacity import BACKEND_PIDS, process_cpu_seconds
from bench.harness import (
    Arrivals,
    Bench,
    ReplicaProcess,
    ScenarioResult,
    VerifyingSubscriber,
    check_delivery,
)
from bench.sendtrace import SendTrace, byte_percentiles
from jobpub.mqtt import PROTOCOL_V5, UTF8_PAYLOAD, Message, MqttConnection

TARGET_P99_MS = 50
# Seconds from the INSERT to the occurrence: the materialisation of 10,000 schedules
# (20 passes of 500) must finish before it, with room on a busy machine.
LEAD = 40.0


def schedules(
    bench: Bench, count: int, replicas: int = 1, trace: bool = False, spread: float = 0.0
) -> ScenarioResult:
    """`count` schedules firing in one second; with `spread` (seconds), each occurrence's
    row falls due at its own point within the spread, and lag counts from that point."""
    prefix = "bench/schedules"
    bench.reset()
    with psycopg.connect(bench.db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM schedules")
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
    others = _comparison_subscribers(bench, prefix) if trace else {}
    with bench.replicas(replicas) as running:
        for replica in running:
            replica.mark()
        occurrence = float(int(time.time() + LEAD))
        when = time.gmtime(occurrence)
        cron = f"{when.tm_sec} {when.tm_min} {when.tm_hour} * * *"
        with psycopg.connect(bench.db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO schedules (name, topic, payload, cron, spread) "
                "SELECT 'bench-' || i, %s || '/' || i, '{}', %s, make_interval(secs => %s)"
                " FROM generate_series(1, %s) i",
                (prefix, cron, spread, count),
            )
        inserted = time.time()
        materialised_after = _wait_materialised(bench, count, occurrence)
        materialised = materialised_after - inserted
        # The burst's CPU is counted from a second before the occurrence: the replicas
        # claim up to their lookahead (at most a second here) ahead.
        time.sleep(max(0.0, occurrence - 1.0 - time.time()))
        load = os.getloadavg()[0]
        before = _cpu_seconds(bench, running, subscriber)
        traces = [
            SendTrace(r.process.pid, bench.broker.port, bench.work / f"strace-{r.process.pid}")
            for r in running
        ] if trace else []  # fmt: skip
        bench.wait_drained(timeout=LEAD + 120)
        subscriber.wait_settled(count, timeout=60)
        cpu_ms = _cpu_ms(before, _cpu_seconds(bench, running, subscriber))
        sent = [t.stop() for t in traces]
        handoff = _handoff_percentiles(running)
        usage = [replica.usage() for replica in running]
    arrivals = subscriber.stop()
    expected = _fire_ats(bench) if spread else dict.fromkeys(range(1, count + 1), occurrence)
    delivery = check_delivery(expected, arrivals)
    spread_ms = _arrival_span_ms(arrivals.times)
    with psycopg.connect(bench.db_url) as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.99) WITHIN GROUP ("
            "  ORDER BY extract(epoch FROM processed_at - fire_at) * 1000),"
            " count(DISTINCT schedule_name), count(*) FROM jobs"
        ).fetchone()
    if row is None:
        raise RuntimeError("no percentile row")
    notes: dict[str, Any] = {
        "load_average_1m": round(load, 2),
        "materialised_s": round(materialised, 2),
        "materialised_before_occurrence_s": round(occurrence - materialised_after, 2),
        "handoff_lag_le_ms": handoff,
        "marked_p99_ms": round(float(row[0]), 1),
        "rows": int(row[2]),
        "schedules_with_rows": int(row[1]),
        "first_to_last_arrival_ms": spread_ms,
        "first_arrival_ms": _first_arrival_ms(arrivals.times, expected),
        "burst_cpu_ms": cpu_ms,
        "target_p99_ms": TARGET_P99_MS,
        "target_met": delivery.lag_p99_ms <= TARGET_P99_MS and delivery.lost == 0,
        **({"spread_s": spread} if spread else {}),
    }
    if trace:
        writes = [call for calls, _ in sent for call in calls]
        reads = [call for _, calls in sent for call in calls]
        notes["traced_sent_ms"] = byte_percentiles(writes, occurrence)
        notes["traced_acks_read_ms"] = byte_percentiles(reads, occurrence)
        notes["traced_writes"] = len(writes)
        for name, other in others.items():
            seen = check_delivery(expected, _merged(other))
            notes[f"subscriber_{name}_ms"] = {
                "lost": seen.lost, "p50": seen.lag_p50_ms, "p99": seen.lag_p99_ms,
                "max": seen.lag_max_ms,
            }  # fmt: skip
    return ScenarioResult(
        f"schedules-{replicas}",
        replicas,
        count,
        round(count / max(delivery.lag_max_ms / 1000, 1e-3)),
        delivery,
        usage,
        notes,
    )


def broker_floor(bench: Bench, count: int) -> ScenarioResult:
    """The same burst with no database and no schedule: `count` messages built in
    advance and handed in one call to one connection of jobpub's MQTT writer (which
    encodes them and writes them with all in flight), received by the same subscriber.
    Its lag is what the broker and the subscriber alone take, plus one encoding pass: a
    floor under the replicas' figures, measured under the same load."""
    prefix = "bench/floor"
    broker = bench.broker.process
    if broker is None:
        raise RuntimeError("the bench broker is not running")
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
    load = os.getloadavg()[0]
    before = process_cpu_seconds(broker.pid)
    started = asyncio.run(_publish_at_once(bench.broker.port, prefix, count))
    subscriber.wait_settled(count, timeout=60)
    broker_ms = (process_cpu_seconds(broker.pid) - before) * 1000
    arrivals = subscriber.stop()
    delivery = check_delivery(dict.fromkeys(range(1, count + 1), started), arrivals)
    return ScenarioResult(
        "schedules-floor",
        0,
        count,
        round(count / max(delivery.lag_max_ms / 1000, 1e-3)),
        delivery,
        [],
        {
            "load_average_1m": round(load, 2),
            "first_to_last_arrival_ms": _arrival_span_ms(arrivals.times),
            "broker_cpu_ms": round(broker_ms),
        },
    )


async def _publish_at_once(port: int, prefix: str, count: int) -> float:
    """Publish `count` QoS 1 messages like a replica's (job id as a user property) in
    one call, all in flight at once; time.time() of the call."""
    messages = [
        Message(f"{prefix}/{i}", b"{}", 1, False, (("jobpub-job-id", str(i)),), UTF8_PAYLOAD)
        for i in range(1, count + 1)
    ]
    async with MqttConnection(
        "127.0.0.1", port, client_id="bench-floor", protocol=PROTOCOL_V5, inflight=65535
    ) as connection:
        started = time.time()
        await connection.publish(messages)
    return started


def _fire_ats(bench: Bench) -> dict[int, float]:
    """Each schedule's row's fire_at (its occurrence plus its spread offset), by the
    number its name (and topic) ends with."""
    with psycopg.connect(bench.db_url) as conn:
        rows = conn.execute(
            "SELECT split_part(schedule_name, '-', 2)::int, extract(epoch FROM fire_at)::float8"
            " FROM jobs"
        ).fetchall()
    return {int(number): float(due) for number, due in rows}


def _comparison_subscribers(bench: Bench, prefix: str) -> dict[str, list[VerifyingSubscriber]]:
    """A QoS 0 subscriber (no PUBACK to send back) and a shared subscription of four
    (the broker hands each message to one of them, so no one process receives all)."""
    port = bench.broker.port
    return {
        "qos0": [VerifyingSubscriber(port, prefix, bench.work, qos=0, label="-qos0")],
        "shared4": [
            VerifyingSubscriber(port, prefix, bench.work, share="bench", label=f"-shared{n}")
            for n in range(4)
        ],
    }


def _merged(group: list[VerifyingSubscriber]) -> Arrivals:
    merged = Arrivals({}, collections.Counter())
    for member in group:
        for job_id, times in member.stop().times.items():
            merged.times.setdefault(job_id, []).extend(times)
    return merged


def _cpu_seconds(
    bench: Bench, replicas: list[ReplicaProcess], subscriber: VerifyingSubscriber
) -> dict[str, float]:
    """CPU seconds so far of the replicas, the bench database's PostgreSQL backends, the
    broker and the measuring subscriber. Backends opened later count from 0."""
    with psycopg.connect(bench.db_url, autocommit=True) as conn:
        pids = [row[0] for row in conn.execute(BACKEND_PIDS, {"database": bench.db_name})]
    broker = bench.broker.process
    return {
        "replicas": sum(process_cpu_seconds(r.process.pid) for r in replicas),
        **{f"backend-{pid}": process_cpu_seconds(pid) for pid in pids},
        "broker": process_cpu_seconds(broker.pid) if broker else 0.0,
        "subscriber": process_cpu_seconds(subscriber.pid),
    }


def _cpu_ms(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    spent = {name: cpu - before.get(name, 0.0) for name, cpu in after.items()}
    postgres = sum(cpu for name, cpu in spent.items() if name.startswith("backend-"))
    return {
        "replicas": round(spent["replicas"] * 1000),
        "postgres": round(postgres * 1000),
        "broker": round(spent["broker"] * 1000),
        "subscriber": round(spent["subscriber"] * 1000),
    }


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


def _first_arrival_ms(times: dict[int, list[float]], fire_at: dict[int, float]) -> float:
    """The earliest lag of all: when the first message of the burst arrived."""
    lags = [min(t) - fire_at[job_id] for job_id, t in times.items() if t and job_id in fire_at]
    return round(min(lags) * 1000, 1) if lags else float("nan")


def _arrival_span_ms(times: dict[int, list[float]]) -> float:
    firsts = [min(t) for t in times.values() if t]
    return round((max(firsts) - min(firsts)) * 1000, 1) if firsts else float("nan")


def render_chart(results: list[ScenarioResult], path: Path) -> None:
    """Each run's arrival lag (p50, p99, max) beside the broker's floor measured after
    it, against the target."""
    figure, axes = plt.subplots(figsize=(8, 1.5 + 0.45 * len(results)))
    labels, run = [], 0
    for result in results:
        run += result.name != "schedules-floor"
        plural = "s" if result.replicas > 1 else ""
        who = (
            "broker floor" if result.replicas == 0 else f"jobpub, {result.replicas} replica{plural}"
        )
        labels.append(f"run {run}: {who}")
    rows = range(len(results))
    for offset, (name, colour) in enumerate(
        (("p50", "#9bbbd9"), ("p99", "#4878a8"), ("max", "#23395b"))
    ):
        values = [getattr(r.delivery, f"lag_{name}_ms", 0.0) if r.delivery else 0.0
                  for r in results]  # fmt: skip
        axes.barh([row + (offset - 1) * 0.27 for row in rows], values, height=0.27,
                  color=colour, label=name)  # fmt: skip
    axes.axvline(TARGET_P99_MS, color="#c44e52", linestyle="--", linewidth=1,
                 label=f"p99 target {TARGET_P99_MS} ms")  # fmt: skip
    axes.set_yticks(list(rows), labels)
    axes.invert_yaxis()
    axes.set_xlabel("ms from the occurrence (floor: from the write) to arrival")
    axes.set_title(f"{results[0].jobs:,} messages due in the same second, this machine")
    axes.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
