"""Real `jobpub run` processes that freeze or wait: a replica stopped (SIGSTOP) while it
holds a batch, and SIGTERM while every slot waits on a broker that never acks."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import time
from pathlib import Path

from testbed.broker import Broker
from testbed.daemon import Replica, env_for
from testbed.sql import scalar
from testbed.subscriber import Subscriber
from testbed.waiting import wait_until
from tests.acceptance.test_replicas import insert_due, locked_rows, start

# What a test replica's shutdown may take beyond JOBPUB_SHUTDOWN_TIMEOUT: the MQTT
# DISCONNECT to a broker that does not read (jobpub.publisher.DISCONNECT_TIMEOUT, 2 s),
# and a process's start-up and exit on a busy machine.
EXIT_MARGIN = 4.0


def test_a_frozen_replicas_rows_are_published_by_another_within_the_hold_timeout(
    db_url: str, broker: Broker, subscriber: Subscriber, tmp_path: Path, replicas: list[Replica]
) -> None:
    hold = 6.0
    # It claims rows due in 3 s at once (lookahead 4 s) and holds them for their time:
    # stopped meanwhile, it holds their locks in an idle transaction.
    frozen = start(replicas, tmp_path, env_for(db_url, broker.url, lookahead="4",
                   mqtt_ack_timeout="1", hold_timeout=str(hold)))  # fmt: skip
    other = start(replicas, tmp_path, env_for(db_url, broker.url))
    for replica in (frozen, other):
        wait_until(lambda r=replica: '"broker_connected"' in r.log_text(), 20, "replica up")  # type: ignore[misc]
    inserted_at = time.time()
    insert_due(db_url, subscriber.prefix, 20, offset="3 s")
    wait_until(lambda: locked_rows(db_url) == 20, 10, "the rows claimed and held")
    frozen.signal(signal.SIGSTOP)
    stopped_at = time.time()
    try:
        assert subscriber.count() == 0, "frozen before the rows' time"
        subscriber.wait_for_jobs(20, hold + 15)
        arrivals = [m.arrived_at for m in subscriber.snapshot()]
        # Held until the database ended the frozen transaction, then taken by the other
        # replica at its next claim: within the hold timeout and a poll interval (0.5 s).
        assert min(arrivals) >= inserted_at + hold - 0.2
        assert max(arrivals) - stopped_at <= hold + 0.5 + 2.0
        wait_until(
            lambda: scalar(db_url, "SELECT count(*) FROM jobs WHERE processed") == 20,
            10,
            "the other replica to mark them",
        )
    finally:
        frozen.signal(signal.SIGCONT)
    # Thawed, the frozen replica finds its claim gone: it sends none of it and goes on.
    wait_until(lambda: '"batch_hold_expired"' in frozen.log_text(), 20, "the thawed batch given up")
    other.signal(signal.SIGTERM)
    assert other.wait(30) == 0
    insert_due(db_url, f"{subscriber.prefix}/after", 5)
    subscriber.wait_for_jobs(25, 20)
    copies = collections.Counter(m.job_id for m in subscriber.snapshot())
    assert len(copies) == 25
    assert max(copies.values()) == 1, "the thawed replica published a row the other had"
    assert frozen.process.poll() is None, "the thawed replica is still running"
    frozen.signal(signal.SIGTERM)
    assert frozen.wait(30) == 0


def test_sigterm_while_every_slot_waits_on_a_broker_that_never_acks(
    db_url: str, own_broker: Broker, tmp_path: Path, replicas: list[Replica]
) -> None:
    shutdown_timeout = 2.0
    # The ack deadline (60 s) must not free a slot first: only the stop may end this.
    env = env_for(db_url, own_broker.url, batch_size="5", concurrency="2",
                  shutdown_timeout=str(shutdown_timeout), mqtt_ack_timeout="60",
                  hold_timeout="90")  # fmt: skip
    replica = start(replicas, tmp_path, env)
    wait_until(lambda: '"broker_connected"' in replica.log_text(), 20, "replica connected")
    assert own_broker.process is not None
    own_broker.process.send_signal(signal.SIGSTOP)  # connected, and now silent
    try:
        insert_due(db_url, "silent-broker", 20)
        # Two full batches out, unacknowledged: the claim loop waits for a slot.
        wait_until(lambda: locked_rows(db_url) == 10, 20, "both slots busy")
        replica.signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert replica.wait(shutdown_timeout + EXIT_MARGIN + 5) == 0
        assert time.monotonic() - signalled <= shutdown_timeout + EXIT_MARGIN
    finally:
        own_broker.process.send_signal(signal.SIGCONT)
    log = replica.log_text()
    assert '"drain_timed_out"' in log
    assert '"stopped"' in log
    # Given back as they were: pending, not dead, no retry backoff, no error charged.
    # (attempts may count the claim itself, never a failure: at most 1.)
    rows = scalar(
        db_url,
        "SELECT array_agg(DISTINCT (processed, failed_at IS NULL, next_attempt_at IS NULL,"
        " last_error IS NULL, attempts <= 1)::text) FROM jobs",
    )
    assert rows == ["(f,t,t,t,t)"]


def test_a_hold_timeout_within_the_ack_deadline_is_refused_at_start(tmp_path: Path) -> None:
    env = env_for("postgresql://db.invalid/jobs", "mqtt://broker.invalid",
                  mqtt_ack_timeout="30", hold_timeout="20")  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "jobpub", "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    [line] = result.stderr.splitlines()
    assert "JOBPUB_HOLD_TIMEOUT (20 s) must exceed JOBPUB_MQTT_ACK_TIMEOUT" in line
