"""Real `jobpub` processes through a real PgBouncer in transaction mode."""

from __future__ import annotations

import collections
import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from testbed.broker import Broker
from testbed.daemon import Replica, env_for
from testbed.pgbouncer import PgBouncer, start_pgbouncer
from testbed.subscriber import Subscriber
from testbed.waiting import wait_until

JOBS = 3000


@pytest.fixture(scope="module")
def pgbouncer() -> Iterator[PgBouncer]:
    with start_pgbouncer(pool_mode="transaction") as running_bouncer:
        yield running_bouncer


def processed(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT count(*) FROM jobs WHERE processed").fetchone()
        assert row is not None
        return int(row[0])


def test_replicas_through_transaction_pooling_publish_every_job_once(
    *,
    db_url: str,
    pgbouncer: PgBouncer,
    broker: Broker,
    subscriber: Subscriber,
    tmp_path: Path,
    replicas: list[Replica],
) -> None:
    # Small batches: many claims per pooled connection, well past psycopg's 5 runs
    # before it prepares a statement, so prepared statements would meet other servers.
    env = env_for(pgbouncer.url(db_url), broker.url, transaction_pooling="true", batch_size="20")
    replicas.extend(Replica(env, tmp_path / f"replica-{index}.log") for index in range(2))
    for replica in replicas:
        wait_until(lambda r=replica: '"broker_connected"' in r.log_text(), 20, "replica up")  # type: ignore[misc]
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (topic, payload) "
            "SELECT %s || '/' || i, i::text FROM generate_series(1, %s) i",
            (subscriber.prefix, JOBS),
        )
    subscriber.wait_for_jobs(JOBS, 90)
    wait_until(lambda: processed(db_url) == JOBS, 30, "every row marked processed")
    copies = collections.Counter(m.job_id for m in subscriber.snapshot())
    assert len(copies) == JOBS
    assert max(copies.values()) == 1, "a job was published twice"
    for replica in replicas:
        log = replica.log_text()
        assert log.count('"listen_disabled"') == 1
        for failure in ('"claim_failed"', '"batch_settle_failed"', '"listen_failed"'):
            assert failure not in log, log[-3000:]
    assert sum('"batch_published"' in r.log_text() for r in replicas) == 2, "both worked"


def test_concurrent_jobpub_migrate_through_transaction_pooling_serialise(
    empty_db_url: str, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    env = env_for(pgbouncer.url(empty_db_url), "mqtt://127.0.0.1:1")
    with contextlib.ExitStack() as outputs:
        runs = [
            subprocess.Popen(
                [sys.executable, "-m", "jobpub", "migrate", "--wait", "0"],
                env=env,
                stdout=outputs.enter_context((tmp_path / f"migrate-{index}.log").open("wb")),
                stderr=subprocess.STDOUT,
            )
            for index in range(2)
        ]
        assert [run.wait(timeout=60) for run in runs] == [0, 0]
    applied = []
    for index in range(2):
        for line in (tmp_path / f"migrate-{index}.log").read_text().splitlines():
            event = json.loads(line)
            if event["event"] == "migrated":
                applied.append(event["applied"])
    assert len(applied) == 2
    with psycopg.connect(empty_db_url) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM jobpub_migrations")]
    # Each version applied once, by one of the two runs; the other found it done.
    assert sorted(applied[0] + applied[1]) == sorted(versions)
    assert len(versions) == len(set(versions)) > 0
