"""`bash scripts/demo.sh`: the showcase arrives, and SIGTERM stops all it started, nothing else."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from testbed.broker import Broker
from testbed.sql import scalar
from testbed.waiting import wait_until
from tests.conftest import ADMIN_URL, PROJECT, database_url

DEMO = PROJECT / "scripts" / "demo.sh"
# "started replica 1 (pid 123): http://...", "started Mosquitto (pid 45) on mqtt://..."
STARTED_PID = re.compile(r"\(pid (\d+)\)")
CLEAN_REPLICA_STOP = re.compile(r"^stopped replicas \((pid \d+ exit 0(, )?){3}\)$", re.MULTILINE)
MESSAGE = re.compile(r"^message (\S+) at [0-9:.]+, (-?\d+) ms after its fire_at: ", re.MULTILINE)


@dataclass
class Demo:
    process: subprocess.Popen[bytes]
    output_path: Path

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def lags_by_topic(self) -> dict[str, list[int]]:
        lags: dict[str, list[int]] = {}
        for topic, lag in MESSAGE.findall(self.output()):
            lags.setdefault(topic, []).append(int(lag))
        return lags

    def wait_for_messages(self, topics: set[str], timeout: float) -> dict[str, list[int]]:
        def arrived() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the demo ended early:\n{self.output()}")
            return topics <= self.lags_by_topic().keys()

        wait_until(arrived, timeout, f"messages on {sorted(topics)}")
        return self.lags_by_topic()

    def started_pids(self) -> set[int]:
        lines = [line for line in self.output().splitlines() if line.startswith("started ")]
        return {int(pid) for line in lines for pid in STARTED_PID.findall(line)}


def processes_marked(marker: str) -> set[int]:
    """Live processes whose environment carries `marker`: what the demo started, at any depth.

    The demo puts its services in sessions of their own, so neither process group nor
    session finds them; the environment every child inherits does.
    """
    found = set()
    needle = f"JOBPUB_DEMO_TEST_RUN={marker}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.add(int(entry.name))
    return found


@contextlib.contextmanager
def demo_running(env: dict[str, str], output_path: Path) -> Iterator[Demo]:
    with output_path.open("wb") as output:
        process = subprocess.Popen(
            ["bash", str(DEMO)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C at pytest's terminal is not the demo's
        )
    try:
        yield Demo(process, output_path)
    finally:
        if process.poll() is None:  # the test failed midway: leave nothing behind
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        for pid in processes_marked(env["JOBPUB_DEMO_TEST_RUN"]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def stop(demo: Demo, marker: str, *, ctrl_c: bool) -> None:
    """SIGTERM to the script, or SIGINT to its process group as a terminal's Ctrl-C sends."""
    started = demo.started_pids()
    # Mosquitto, mosquitto_sub and three replicas, each running until now.
    assert len(started) == 5, demo.output()
    assert started <= processes_marked(marker)
    if ctrl_c:
        os.killpg(demo.process.pid, signal.SIGINT)
    else:
        demo.process.send_signal(signal.SIGTERM)
    assert demo.process.wait(timeout=40) == 0, demo.output()
    assert processes_marked(marker) == set(), "a process the demo started is still running"
    # The replicas drained and exited 0 (one signal each), not killed after a timeout.
    assert CLEAN_REPLICA_STOP.search(demo.output()), demo.output()
    assert "database left for inspection" in demo.output()


def quiet_port() -> int:
    """A free port below Linux's ephemeral range (32768 up), where no outgoing connection
    of a parallel test takes it between this check and the demo's bind; random, so
    parallel runs seldom meet."""
    while True:
        port = random.randrange(20_000, 30_000)  # noqa: S311 - not for security
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def test_demo_runs_the_showcase_twice_and_stops_only_what_it_started(
    tmp_path: Path, own_broker: Broker
) -> None:
    database = f"jobpub_demo_test_{uuid.uuid4().hex[:12]}"
    marker = uuid.uuid4().hex
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPUB_")}
    env.update(
        JOBPUB_DEMO_ADMIN_URL=ADMIN_URL,
        JOBPUB_DEMO_DATABASE=database,
        JOBPUB_DEMO_MQTT_PORT=str(quiet_port()),
        JOBPUB_DEMO_HTTP_PORT=str(quiet_port()),  # the replicas take the first free from here
        JOBPUB_DEMO_TEST_RUN=marker,  # every process the demo starts inherits it
        TMPDIR=str(tmp_path),
    )
    try:
        with demo_running(env, tmp_path / "first.out") as first:
            lags = first.wait_for_messages({"jobpub-demo/due-now", "jobpub-demo/in-5s"}, 60)
            assert min(lags["jobpub-demo/due-now"] + lags["jobpub-demo/in-5s"]) >= 0, "early"
            stop(first, marker, ctrl_c=False)
        showcase = "SELECT count(*) FROM jobs WHERE topic LIKE 'jobpub-demo/%'"
        assert scalar(database_url(database), showcase) == 4

        # Again on the same database (kept as it was, migrated already), stopped by Ctrl-C.
        with demo_running(env, tmp_path / "second.out") as second:
            second.wait_for_messages({"jobpub-demo/due-now"}, 60)
            stop(second, marker, ctrl_c=True)
        assert '"up_to_date": true' in second.output()
        assert scalar(database_url(database), showcase) == 8
        assert own_broker.process is not None
        assert own_broker.process.poll() is None, "the demo stopped a Mosquitto not its own"
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
