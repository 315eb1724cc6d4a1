"""The benchmark topology on this machine, without Docker.

Its own PostgreSQL database, its own Mosquitto on a free port (the project's no-drop
config), replicas as real `jobpub run` processes, and a verifying subscriber that is
not jobpub's code: Mosquitto's own `mosquitto_sub`, printing each message's arrival.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from testbed.broker import Broker, free_port, start_broker

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PROJECT = Path(__file__).resolve().parent.parent
RUNTIME_VENV = PROJECT / "bench" / ".runtime-venv"


def runtime_python() -> str:
    """A virtualenv with jobpub and its runtime dependencies only, as the image has.

    The development venv also holds test tools (rich, via import-linter, which
    structlog then imports); replicas measured there would carry memory no
    deployment has.
    """
    python = RUNTIME_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(RUNTIME_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(PROJECT)],
        check=True,
    )
    # Bytecode for -OO, as the image runs (PYTHONOPTIMIZE=2 in env()): else every
    # replica start compiles its modules.
    subprocess.run([str(python), "-m", "compileall", "-q", "-o", "2", str(RUNTIME_VENV / "lib")],
                   check=True, capture_output=True)  # fmt: skip
    return str(python)


@dataclass
class Delivery:
    """What the verifying subscriber saw for one run, checked against what was sent."""

    expected: int
    received: int
    lost: int
    duplicated: int  # copies beyond the first, whoever sent them
    published_twice: int  # of those, fresh copies: the job reached the broker again
    early: int
    lag_p50_ms: float
    lag_p95_ms: float
    lag_p99_ms: float
    lag_max_ms: float


@dataclass
class ReplicaUsage:
    peak_rss_mib: float
    cpu_percent: float


@dataclass
class ScenarioResult:
    name: str
    replicas: int
    jobs: int
    jobs_per_s: float
    delivery: Delivery | None
    usage: list[ReplicaUsage] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass
class Arrivals:
    """Each job's arrival times, and how many of its copies the broker marked DUP=1."""

    times: dict[int, list[float]]
    redelivered: collections.Counter[int]


class VerifyingSubscriber:
    """`mosquitto_sub` at QoS 1 on `<prefix>/#`, one line per message: arrival, topic.

    `flags`: also read each PUBLISH's DUP flag from mosquitto_sub's debug lines, to tell
    the broker re-sending a message to this subscriber (DUP=1, after a broker restart)
    from a job published twice (two fresh copies).
    """

    def __init__(self, port: int, prefix: str, directory: Path, *, persistent: bool = False,
                 flags: bool = False) -> None:  # fmt: skip
        self.prefix = prefix
        self.path = directory / f"{prefix.replace('/', '_')}.received"
        self._out = self.path.open("wb")
        binary = shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub"
        # persistent: a session the broker keeps across its restarts, with what is queued
        session = ["-c", "-i", f"verifier-{prefix.replace('/', '-')}"] if persistent else []
        self._process = subprocess.Popen(
            ["stdbuf", "-oL", binary, "-h", "127.0.0.1", "-p", str(port), "-V", "mqttv5",
             "-q", "1", "-t", f"{prefix}/#", "-F", "%U %t", *session, *(["-d"] if flags else [])],
            stdout=self._out,
            # With TZ unset, glibc stats /etc/localtime twice per message: a third of the
            # verifier's system calls, on the cores the system under test needs.
            env={**os.environ, "TZ": "UTC"},
        )  # fmt: skip
        time.sleep(0.3)  # mosquitto_sub has no "subscribed" signal; the broker is local

    def lines(self) -> int:
        """Messages received so far (debug lines are not counted)."""
        with self.path.open("rb") as source:
            return sum(1 for line in source if line[:1].isdigit())

    def wait_settled(self, expected: int, timeout: float) -> None:
        """Until `expected` lines arrived, or nothing new came for 3 s, or `timeout`."""
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = self.lines()
            if count >= expected:
                return
            if count != last:
                last, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > 3:
                return
            time.sleep(0.1)

    def stop(self) -> Arrivals:
        self._process.terminate()
        self._process.wait(timeout=10)
        self._out.close()
        arrivals = Arrivals({}, collections.Counter())
        duplicate_flag = False  # from the debug line just before a message's own line
        for line in self.path.read_text().splitlines():
            if line.startswith("Client "):
                if " received PUBLISH (" in line:
                    duplicate_flag = " received PUBLISH (d1," in line
                continue
            stamp, _, topic = line.partition(" ")
            if not topic.startswith(f"{self.prefix}/"):
                continue  # another debug line ("Subscribed (mid: 1): 1")
            job_id = int(topic.rsplit("/", 1)[1])
            arrivals.times.setdefault(job_id, []).append(float(stamp))
            if duplicate_flag:
                arrivals.redelivered[job_id] += 1
        return arrivals


def check_delivery(fire_at: dict[int, float], arrivals: Arrivals) -> Delivery:
    """Every job arrived? How often, and how long after its fire_at (early counts < 0)?

    A job's copies beyond the first are duplicates. Those are split by who sent them:
    `published_twice` counts fresh copies (DUP=0) beyond one, so the job reached the
    broker more than once; the rest are the broker re-sending to this subscriber.
    """
    lags = []
    early = duplicated = published_twice = lost = 0
    for job_id, due in fire_at.items():
        times = arrivals.times.get(job_id)
        if not times:
            lost += 1
            continue
        duplicated += len(times) - 1
        published_twice += max(0, len(times) - arrivals.redelivered[job_id] - 1)
        first = min(times)
        if first < due:
            early += 1
        lags.append((first - due) * 1000)
    lags.sort()

    def pct(p: float) -> float:
        return round(lags[min(len(lags) - 1, int(p * len(lags)))], 2) if lags else float("nan")

    return Delivery(
        expected=len(fire_at),
        received=sum(len(t) for t in arrivals.times.values()),
        lost=lost,
        duplicated=duplicated,
        published_twice=published_twice,
        early=early,
        lag_p50_ms=pct(0.50),
        lag_p95_ms=pct(0.95),
        lag_p99_ms=pct(0.99),
        lag_max_ms=round(lags[-1], 2) if lags else float("nan"),
    )


class ReplicaProcess:
    """A `jobpub run` process; CPU and peak RSS are read from /proc."""

    def __init__(self, python: str, env: dict[str, str], log_path: Path, http_port: int) -> None:
        self.http_port = http_port
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [python, "-m", "jobpub", "run"], env=env, stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self._cpu_mark = 0.0
        self._wall_mark = time.monotonic()

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}/readyz", timeout=1
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def scrape(self) -> list[str]:
        """The /metrics page, one line a list item."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.http_port}/metrics", timeout=5
        ) as response:
            body: bytes = response.read()
        return body.decode().splitlines()

    def metric(self, name: str) -> float:
        for line in self.scrape():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def histogram(self, name: str) -> dict[float, float]:
        """A histogram's cumulative bucket counts by upper bound (`le`)."""
        buckets = {}
        for line in self.scrape():
            if line.startswith(f'{name}_bucket{{le="'):
                bound = line.split('"')[1]
                buckets[float(bound)] = float(line.rsplit(" ", 1)[1])
        return buckets

    def _cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def mark(self) -> None:
        """Start of the measured interval."""
        self._cpu_mark = self._cpu_seconds()
        self._wall_mark = time.monotonic()

    def usage(self) -> ReplicaUsage:
        cpu = self._cpu_seconds() - self._cpu_mark
        wall = time.monotonic() - self._wall_mark
        peak_kb = 0
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                peak_kb = int(line.split()[1])
        return ReplicaUsage(round(peak_kb / 1024, 1), round(100 * cpu / wall, 2))

    def kill(self) -> None:
        """SIGKILL, as the OOM killer or a lost node would."""
        self.process.kill()
        self.process.wait(timeout=10)
        self._log.close()

    def stop(self) -> int:
        if self.process.poll() is not None:
            self._log.close()
            return self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            self._log.close()


class Bench:
    """One database and one broker for the whole run; scenarios reset the table."""

    def __init__(
        self, admin_url: str, work: Path, broker: Broker, settings: dict[str, str]
    ) -> None:
        self.work = work
        self.python = runtime_python()
        self.settings = settings  # JOBPUB_* for every replica (name without the prefix)
        self.broker = broker
        self._admin_url = admin_url
        self.db_name = f"jobpub_bench_{os.getpid()}"
        self.db_url = admin_url.rpartition("/")[0] + "/" + self.db_name

    def create_database(self) -> None:
        with psycopg.connect(self._admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.db_name}"')
        env = self.env()
        subprocess.run([self.python, "-m", "jobpub", "migrate"], env=env, check=True,
                       capture_output=True)  # fmt: skip

    def drop_database(self) -> None:
        with psycopg.connect(self._admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPUB_")}
        env.update(
            JOBPUB_DATABASE_URL=self.db_url,
            JOBPUB_MQTT_URL=self.broker.url,
            JOBPUB_LOG_FORMAT="json",
            PYTHONOPTIMIZE="2",  # as the image runs replicas
        )
        env.update({f"JOBPUB_{k.upper()}": v for k, v in {**self.settings, **overrides}.items()})
        return env

    def reset(self) -> None:
        with psycopg.connect(self.db_url, autocommit=True) as conn:
            conn.execute("TRUNCATE jobs")
            conn.execute("VACUUM ANALYZE jobs")

    def load(self, prefix: str, fire_at: dict[int, float]) -> float:
        """COPY the rows in; return the time the load committed (time.time())."""
        with psycopg.connect(self.db_url) as conn:
            with conn.cursor().copy("COPY jobs (id, topic, payload, fire_at) FROM STDIN") as copy:
                for job_id, due in fire_at.items():
                    copy.write_row((job_id, f"{prefix}/{job_id}", f'{{"n":{job_id}}}',
                                    _timestamp(due)))  # fmt: skip
            conn.commit()
            return time.time()

    def last_processed_at(self) -> float:
        with psycopg.connect(self.db_url) as conn:
            row = conn.execute("SELECT extract(epoch FROM max(processed_at)) FROM jobs").fetchone()
            return float(row[0]) if row and row[0] is not None else float("nan")

    def processed_among(self, ids: list[int]) -> int:
        """How many of these rows are marked processed."""
        with psycopg.connect(self.db_url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM jobs WHERE id = ANY(%s) AND processed", (ids,)
            ).fetchone()
            return int(row[0]) if row else 0

    def pending(self) -> int:
        with psycopg.connect(self.db_url) as conn:
            row = conn.execute("SELECT count(*) FROM jobs WHERE NOT processed").fetchone()
            return int(row[0]) if row else 0

    def transactions(self) -> int:
        with psycopg.connect(self._admin_url) as conn:
            row = conn.execute(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                (self.db_name,),
            ).fetchone()
            return int(row[0]) if row else 0

    @contextlib.contextmanager
    def replicas(self, count: int, partitioned: bool = False, **overrides: str
                 ) -> Iterator[list[ReplicaProcess]]:  # fmt: skip
        started = []
        for index in range(count):
            extra = dict(overrides)
            if partitioned:
                extra.update(consumer_count=str(count), consumer_index=str(index))
            started.append(self.spawn(free_port(), **extra))
        try:
            wait_ready(started, timeout=30)
            yield started
        finally:
            codes = [r.stop() for r in started]
            if any(codes):
                print(f"warning: replica exit codes {codes}", file=sys.stderr)

    def spawn(self, http_port: int, **overrides: str) -> ReplicaProcess:
        """Start one `jobpub run` serving its HTTP endpoints on `http_port`."""
        log = self.work / f"replica-{time.monotonic_ns()}.log"
        env = self.env(**overrides, http_port=str(http_port))
        return ReplicaProcess(self.python, env, log, http_port)

    def wait_drained(self, timeout: float) -> None:
        """Until no row is pending. Polled twice a second: the count is a sequential scan
        (10-80 ms of PostgreSQL's CPU at 100,000 rows), and polling it every 50 ms took a
        fifth of a core from the system under test. Rates come from processed_at, so
        noticing the end later changes no figure."""
        deadline = time.monotonic() + timeout
        while self.pending():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.pending()} jobs still pending after {timeout}s")
            time.sleep(0.5)


def wait_ready(replicas: list[ReplicaProcess], timeout: float) -> float:
    """Until every replica's /readyz says ready; returns the seconds it took."""
    started = time.monotonic()
    while not all(r.ready() for r in replicas):
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"replicas not ready after {timeout}s")
        time.sleep(0.02)
    return time.monotonic() - started


def _timestamp(epoch: float) -> str:
    return (
        time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1e6):06d}+00"
    )


@contextlib.contextmanager
def bench_environment(admin_url: str, settings: dict[str, str]) -> Iterator[Bench]:
    with tempfile.TemporaryDirectory(prefix="jobpub-bench-") as tmp:
        work = Path(tmp)
        with start_broker(work / "broker") as broker:
            bench = Bench(admin_url, work, broker, settings)
            bench.create_database()
            try:
                yield bench
            finally:
                bench.drop_database()
