"""Chaos: replicas drain a stream of jobs while replicas, the broker and PostgreSQL fail.

Every scenario loads 60,000 rows (`--jobs`) due evenly over 5 s (`--spread`) and runs 4
unpartitioned replicas, as `docker compose up --scale publisher=4` would. It injects its
fault 1 s into the stream and checks with a persistent `mosquitto_sub` session what
arrived. Each fault event records how many rows were still pending when it struck: an
event after the stream was drained tests nothing, so per-fault figures count only the
events inside the stream. Recovery is the time from the fault's end until every replica
is ready and rows are being marked again.

The `pg-failover*` scenarios run on a primary and a streaming standby of their own
(testbed.replication), the replicas on a multi-host URL with
`target_session_attrs=read-write`; their recovery counts from the promotion, until every
replica also claims again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import copy
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, LiteralString

import psycopg

from bench.harness import (
    Bench,
    ReplicaProcess,
    ScenarioResult,
    VerifyingSubscriber,
    check_delivery,
    wait_ready,
)
from jobpub.health import MARK_AFTER_LOSS_WITHIN
from jobpub.settings import Settings
from testbed.broker import free_port
from testbed.proxy import Proxy
from testbed.replication import ReplicationPair, start_replication_pair

JOBS = 60_000  # default; --jobs
SPREAD = 5.0  # seconds over which the rows fall due (default; --spread)
LEAD = 1.0  # the first row is due this long after the load
REPLICAS = 4
FAULT_AT = 1.0  # seconds into the stream (a quarter of it, if shorter)
READY_TIMEOUT = 60.0
# What every scenario must show (the Reliability promise): no job lost, at most this
# many jobs published twice per fault in the stream, every replica ready this soon.
MAX_PUBLISHED_TWICE_PER_FAULT = 100
MAX_RECOVERY_S = 5.0
# A PostgreSQL failover: every replica ready, and rows marked, this soon after the
# promotion (issue 16). Its connections must find the new primary first.
MAX_FAILOVER_RECOVERY_S = 10.0
FAILOVER_DATABASE = "jobpub_bench"
# How long a replica keeps trying to mark rows the broker acknowledged when their commit
# was lost: a promotion later than that may publish its in-flight window again.
REMARK_WINDOW_S = MARK_AFTER_LOSS_WITHIN
# The failover scenarios: how each stops the primary, and how long after the stop the
# standby is promoted. The late one promotes past the 30 s a replica keeps trying to
# mark its acknowledged rows (jobpub.db.complete), as Patroni's defaults (ttl 30 s) may.
FAILOVERS: tuple[tuple[str, Literal["fast", "immediate"], float], ...] = (
    ("pg-failover", "fast", 0.0),
    ("pg-failover-crash", "immediate", 0.0),
    ("pg-failover-late", "immediate", 35.0),
)
# After a failover: the rows the promoted standby holds, and whether it is the server
# the multi-host URL reaches. count(*) scans the table: run once, after the drain.
ROWS_AND_SERVER: Final[LiteralString] = "SELECT count(*), inet_server_port() FROM jobs"


class Fleet:
    """Replicas at fixed HTTP ports, so one can be killed and started again in its place."""

    def __init__(self, bench: Bench, count: int, **overrides: str) -> None:
        self._bench = bench
        self._overrides = overrides
        self.replicas = [bench.spawn(free_port(), **overrides) for _ in range(count)]

    def restart(self, index: int) -> ReplicaProcess:
        """SIGKILL replica `index` and start a new one, as a restart policy would."""
        old = self.replicas[index]
        old.kill()
        self.replicas[index] = self._bench.spawn(old.http_port, **self._overrides)
        return self.replicas[index]

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()


@dataclass(frozen=True)
class FaultEvent:
    pending: int  # rows not yet processed when the fault struck
    recovery_s: float


@dataclass(frozen=True)
class Stream:
    jobs: int
    spread: float  # seconds over which the rows fall due


Fault = Callable[[Bench, Fleet], list[FaultEvent]]  # injects its fault, once or more


def replica_kills(bench: Bench, fleet: Fleet) -> list[FaultEvent]:
    """A random replica SIGKILLed every 1-2 s, kill to kill, and started again, 6 times.

    Each replacement's readiness is watched on a thread meanwhile, so waiting for one
    does not space the kills out.
    """
    watches = []
    with concurrent.futures.ThreadPoolExecutor(thread_name_prefix="chaos-ready") as watcher:
        for number in range(6):
            if number:
                time.sleep(random.uniform(1.0, 2.0))
            pending = bench.pending()
            replacement = fleet.restart(random.randrange(len(fleet.replicas)))
            watches.append((pending, watcher.submit(wait_ready, [replacement], READY_TIMEOUT)))
        return [FaultEvent(pending, round(ready.result(), 2)) for pending, ready in watches]


def broker_restart(*, hard: bool) -> Fault:
    """Graceful: SIGTERM, Mosquitto saves its state. Hard: SIGKILL, it saves nothing."""

    def fault(bench: Bench, fleet: Fleet) -> list[FaultEvent]:
        pending = bench.pending()
        if hard and bench.broker.process is not None:
            # Save the state once before the kill (SIGUSR1), as its periodic autosave
            # would have: else the verifier's session is gone and the broker rightly
            # drops what arrives before it subscribes again, which is not a loss to
            # count against jobpub. What the broker acked after the save is at risk.
            bench.broker.process.send_signal(signal.SIGUSR1)
            time.sleep(0.2)
        bench.broker.stop(hard=hard)
        bench.broker.start()
        return [FaultEvent(pending, _recovery(bench, fleet))]

    return fault


def terminate_connections(bench: Bench, fleet: Fleet) -> list[FaultEvent]:
    """pg_terminate_backend on every connection to the bench database but ours."""
    pending = bench.pending()
    with psycopg.connect(bench.db_url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    return [FaultEvent(pending, _recovery(bench, fleet))]


def postgres_restart(command: list[str]) -> Fault:
    def fault(bench: Bench, fleet: Fleet) -> list[FaultEvent]:
        pending = bench.pending()
        subprocess.run(command, check=True, capture_output=True)
        return [FaultEvent(pending, _recovery(bench, fleet))]

    return fault


def broker_refuses(proxy: _ThreadedProxy, seconds: float) -> Fault:
    """Replicas reach the broker through `proxy`: cut, refuse connections, restore."""

    def fault(bench: Bench, fleet: Fleet) -> list[FaultEvent]:
        pending = bench.pending()
        proxy.cut()
        time.sleep(seconds)
        proxy.open()
        return [FaultEvent(pending, _recovery(bench, fleet))]

    return fault


def postgres_failover(pair: ReplicationPair, mode: Literal["fast", "immediate"],
                      promote_after: float, notes: dict[str, Any]) -> Fault:  # fmt: skip
    """Stop the primary and promote the standby `promote_after` seconds later, as a
    failover manager does once it has decided; recovery counts from the promotion.

    `fast` is a planned switchover (the primary streams all its WAL out before it exits);
    `immediate` a crash of the server, whose WAL not yet sent is lost with it. Before
    the stop the standby has replayed everything the primary had written, the
    producer's rows included (all loaded before the fault): a job missing afterwards is
    jobpub's loss, not the replication's. What the replicas commit after that moment
    and the crash loses (rows marked) is published again: duplicates, never losses.
    The figures go into `notes`.
    """

    def fault(bench: Bench, fleet: Fleet) -> list[FaultEvent]:
        pending = bench.pending()
        pair.wait_replayed(timeout=30)
        pair.stop_primary(mode)
        # No claim succeeds from here until the promotion: one counted after it was
        # made on the promoted standby.
        claims = [_claims(replica) for replica in fleet.replicas]
        time.sleep(promote_after)  # the failover manager's delay, modelled
        promoting, since = time.monotonic(), time.time()
        pair.promote_standby()
        notes["promote_s"] = round(time.monotonic() - promoting, 2)
        notes["ready_and_marking_s"] = _recovery(bench, fleet, started=promoting, since=since)
        # A replica whose batches all wait to re-mark their rows claims nothing, so it
        # may still answer ready: recovered means claiming again, each one of them.
        _wait_claimed_again(fleet, claims, deadline=promoting + READY_TIMEOUT)
        return [FaultEvent(pending, round(time.monotonic() - promoting, 2))]

    return fault


def _claims(replica: ReplicaProcess) -> float:
    """How many claims the replica has made (each one answered by the database)."""
    return replica.metric("jobpub_claim_duration_seconds_count")


def _wait_claimed_again(fleet: Fleet, before: list[float], deadline: float) -> None:
    """Until each replica has made a claim since it had made `before[i]`."""
    waiting = set(range(len(fleet.replicas)))
    while waiting:
        waiting = {i for i in waiting if _claims(fleet.replicas[i]) <= before[i]}
        if waiting and time.monotonic() > deadline:
            raise RuntimeError(f"{len(waiting)} replicas made no claim after the promotion")
        time.sleep(0.02)


def failover(bench: Bench, name: str, mode: Literal["fast", "immediate"], promote_after: float,
             stream: Stream) -> ScenarioResult:  # fmt: skip
    """`run` on a fresh primary and standby, the replicas on the multi-host URL."""
    with start_replication_pair(durable=True) as pair:
        on_pair = _bench_on(bench, pair)
        notes: dict[str, Any] = {"primary_stop": mode, "promoted_after_s": promote_after}
        fault = postgres_failover(pair, mode, promote_after, notes)
        result = run(on_pair, name, fault, stream)
        with psycopg.connect(on_pair.db_url) as conn:
            rows, port = conn.execute(ROWS_AND_SERVER).fetchone() or (0, None)
        # Every row the producer committed is on the promoted standby.
        notes["rows_after_failover"] = int(rows)
        notes["served_by_promoted_standby"] = port == pair.standby.port
        notes["recovery_target_s"] = MAX_FAILOVER_RECOVERY_S
        if promote_after >= REMARK_WINDOW_S:
            # Past the re-mark window the documented bound is each replica's window.
            defaults = Settings.model_fields
            window = int(bench.settings.get("batch_size", defaults["batch_size"].default)) * int(
                bench.settings.get("concurrency", defaults["concurrency"].default)
            )
            notes["published_twice_bound"] = window * REPLICAS
        result.notes.update(notes)
        return result


def _bench_on(bench: Bench, pair: ReplicationPair) -> Bench:
    """`bench` (its broker, work directory and replica venv) with its database on `pair`."""
    with psycopg.connect(pair.primary.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{FAILOVER_DATABASE}"')
    # A copy, not a new Bench: that would reinstall the replicas' venv. Bench reaches its
    # database through db_url alone (the admin URL only creates and drops it).
    on_pair = copy.copy(bench)
    on_pair.db_url = pair.url(FAILOVER_DATABASE)
    subprocess.run([bench.python, "-m", "jobpub", "migrate"], env=on_pair.env(), check=True,
                   capture_output=True)  # fmt: skip
    return on_pair


def _recovery(bench: Bench, fleet: Fleet, started: float | None = None,
              since: float | None = None) -> float:  # fmt: skip
    """Seconds until every replica is ready and a row is marked after `since` (by
    `time.time()`); both default to this moment, `started` by `time.monotonic()`."""
    started = time.monotonic() if started is None else started
    since = time.time() if since is None else since
    wait_ready(fleet.replicas, READY_TIMEOUT)
    deadline = started + READY_TIMEOUT
    while _last_processed_at(bench) < since:
        if time.monotonic() > deadline:
            raise RuntimeError("no row marked after the fault")
        time.sleep(0.02)
    return round(time.monotonic() - started, 2)


def _last_processed_at(bench: Bench) -> float:
    try:
        return bench.last_processed_at()
    except psycopg.OperationalError:
        return float("-inf")  # the database is still coming back


def run(bench: Bench, name: str, fault: Fault, stream: Stream, **overrides: str
        ) -> ScenarioResult:  # fmt: skip
    prefix = f"bench/chaos-{name}"
    bench.reset()
    subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work, persistent=True,
                                     flags=True)  # fmt: skip
    fleet = Fleet(bench, REPLICAS, **overrides)
    try:
        wait_ready(fleet.replicas, READY_TIMEOUT)
        start = time.time() + LEAD
        fire_at = {i: start + (i - 1) * stream.spread / stream.jobs
                   for i in range(1, stream.jobs + 1)}  # fmt: skip
        bench.load(prefix, fire_at)
        time.sleep(max(0.0, start + min(FAULT_AT, stream.spread / 4) - time.time()))
        events = fault(bench, fleet)
        bench.wait_drained(timeout=180)
    except Exception:
        for replica in fleet.replicas:  # the work directory goes with the run: show why
            tail = replica.log_path.read_text(errors="replace").splitlines()[-15:]
            print(f"--- {replica.log_path.name}", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        fleet.stop()
    subscriber.wait_settled(stream.jobs, timeout=60)
    arrivals = subscriber.stop()
    delivery = check_delivery(fire_at, arrivals)
    in_stream = sum(1 for event in events if event.pending)
    lost = [job_id for job_id in fire_at if job_id not in arrivals.times]
    notes = {
        "spread_s": stream.spread,
        "rate_per_s": round(stream.jobs / stream.spread),
        "faults": len(events),
        "faults_in_stream": in_stream,
        "pending_at_fault": [event.pending for event in events],
        # per fault that struck while rows were pending; the broker's re-sends not counted
        "published_twice_per_fault": (
            round(delivery.published_twice / in_stream, 1) if in_stream else float("nan")
        ),
        "recovery_s": [event.recovery_s for event in events],
        # jobpub marks a row only after the broker's PUBACK: a lost job whose row is
        # marked was acknowledged by the broker, and lost after that.
        "lost_after_broker_ack": bench.processed_among(lost),
    }
    print(f"  chaos {name}: lost {delivery.lost}, duplicated {delivery.duplicated} "
          f"(published twice {delivery.published_twice}), faults in stream {in_stream}/"
          f"{len(events)}, recovery {notes['recovery_s']}", flush=True)  # fmt: skip
    return ScenarioResult(f"chaos-{name}", REPLICAS, stream.jobs, 0, delivery, notes=notes)


def bystander(bench: Bench, jobs: int, hold: float) -> list[ScenarioResult]:
    """A drain of `jobs` due rows without, then with, a transaction held open by another
    session (it keeps vacuum from reclaiming the rows the drain marks). Reports the rate
    and the replicas' claim times."""
    results = []
    for held in (False, True):
        name = "chaos-bystander-held" if held else "chaos-bystander-none"
        prefix = f"bench/{name}"
        bench.reset()
        subscriber = VerifyingSubscriber(bench.broker.port, prefix, bench.work)
        with (
            _open_transaction(bench.db_url, hold if held else 0.0),
            bench.replicas(REPLICAS) as running,
        ):
            fire_at = dict.fromkeys(range(1, jobs + 1), time.time() - 1.0)
            loaded = bench.load(prefix, fire_at)
            bench.wait_drained(timeout=180)
            elapsed = bench.last_processed_at() - loaded
            claims = _claim_times_ms(running)
        subscriber.wait_settled(jobs, timeout=60)
        delivery = check_delivery(fire_at, subscriber.stop())
        notes = {"transaction_held_s": hold if held else 0, **claims}
        results.append(ScenarioResult(name, REPLICAS, jobs, round(jobs / elapsed), delivery,
                                      notes=notes))  # fmt: skip
    return results


def _claim_times_ms(replicas: list[ReplicaProcess]) -> dict[str, float]:
    """Mean, p50 and p99 claim time over all replicas, from their histograms."""
    name = "jobpub_claim_duration_seconds"
    total = sum(r.metric(f"{name}_sum") for r in replicas)
    buckets: dict[float, float] = {}
    for replica in replicas:
        for bound, cumulative in replica.histogram(name).items():
            buckets[bound] = buckets.get(bound, 0.0) + cumulative
    count = buckets.get(float("inf"), 0.0)
    return {
        "claim_ms_mean": round(1000 * total / count, 2) if count else float("nan"),
        "claim_ms_p50": round(1000 * histogram_quantile(0.50, buckets), 2),
        "claim_ms_p99": round(1000 * histogram_quantile(0.99, buckets), 2),
    }


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus's estimate: linear within the bucket the quantile falls in."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]] if bounds else 0.0
    if not total:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / (buckets[bound] - below)
        lower, below = bound, buckets[bound]
    return lower


@contextlib.contextmanager
def _open_transaction(url: str, seconds: float) -> Iterator[None]:
    """A session holding a snapshot open for `seconds` (from entry) in a thread."""
    if seconds <= 0:
        yield
        return
    opened = threading.Event()

    def hold() -> None:
        with psycopg.connect(url) as conn:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            conn.execute("SELECT count(*) FROM jobs")
            opened.set()
            time.sleep(seconds)
            conn.rollback()

    thread = threading.Thread(target=hold, name="bystander-transaction", daemon=True)
    thread.start()
    opened.wait(timeout=10)
    try:
        yield
    finally:
        thread.join()


class _ThreadedProxy:
    """testbed.proxy.Proxy on its own event loop thread, driven from sync code."""

    def __init__(self, port: int) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="chaos-broker-proxy", daemon=True
        )
        self._thread.start()
        self._proxy = Proxy("127.0.0.1", port)
        self.open()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self._proxy.port}"

    def open(self) -> None:
        asyncio.run_coroutine_threadsafe(self._proxy.open(), self._loop).result(10)

    def cut(self) -> None:
        asyncio.run_coroutine_threadsafe(self._proxy.cut(), self._loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._proxy.close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def postgres_restart_command() -> list[str]:
    """The Debian cluster's restart, as the machine's PostgreSQL is run here."""
    versions = sorted(Path("/etc/postgresql").iterdir())
    if not versions:
        raise RuntimeError("no PostgreSQL cluster under /etc/postgresql to restart")
    return ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1].name, "main", "restart",
            "-m", "fast"]  # fmt: skip


def all_scenarios(bench: Bench, only: set[str] | None, stream: Stream
                  ) -> list[ScenarioResult]:  # fmt: skip
    def wanted(name: str) -> bool:
        return only is None or name in only

    results = []
    if wanted("replica-kills"):
        results.append(run(bench, "replica-kills", replica_kills, stream))
    if wanted("broker-restart"):
        results.append(run(bench, "broker-restart", broker_restart(hard=False), stream))
    if wanted("broker-kill"):
        results.append(run(bench, "broker-kill", broker_restart(hard=True), stream))
    if wanted("pg-terminate"):
        results.append(run(bench, "pg-terminate", terminate_connections, stream))
    if wanted("pg-restart"):
        results.append(
            run(bench, "pg-restart", postgres_restart(postgres_restart_command()), stream)
        )
    for name, mode, promote_after in FAILOVERS:
        if wanted(name):
            results.append(failover(bench, name, mode, promote_after, stream))
    if wanted("broker-refuses"):
        proxy = _ThreadedProxy(bench.broker.port)
        try:
            refusal = broker_refuses(proxy, 10.0)
            results.append(run(bench, "broker-refuses", refusal, stream, mqtt_url=proxy.url))
        finally:
            proxy.close()
    if wanted("bystander"):
        results.extend(bystander(bench, stream.jobs, 30.0))
    return results


def shortfalls(results: list[ScenarioResult]) -> list[str]:
    """Each way a scenario missed the targets, as a line; none means the run passed."""
    missed = []
    for result in results:
        delivery, notes = result.delivery, result.notes
        if delivery is not None and delivery.lost:
            acked = notes.get("lost_after_broker_ack")
            by_broker = f", {acked} of them acked by the broker" if acked else ""
            missed.append(f"{result.name}: {delivery.lost} jobs lost{by_broker}")
        if "faults" not in notes:  # the bystander runs: a drain, no fault event
            if delivery is not None and delivery.published_twice:
                missed.append(f"{result.name}: {delivery.published_twice} published twice")
            continue
        per_fault = notes["published_twice_per_fault"]
        bound = notes.get("published_twice_bound", MAX_PUBLISHED_TWICE_PER_FAULT)
        if per_fault > bound:
            missed.append(f"{result.name}: {per_fault} published twice per fault "
                          f"(at most {bound})")  # fmt: skip
        worst, limit = max(notes["recovery_s"]), notes.get("recovery_target_s", MAX_RECOVERY_S)
        if worst > limit:
            missed.append(f"{result.name}: recovery {worst} s (at most {limit:g} s)")
        if notes.get("rows_after_failover", result.jobs) != result.jobs:
            missed.append(f"{result.name}: {notes['rows_after_failover']} rows of "
                          f"{result.jobs} on the promoted standby")  # fmt: skip
    return missed
