"""A real `jobpub run` on a multi-host URL follows a PostgreSQL failover: the primary
crashes, the streaming standby is promoted, and the replica publishes from it."""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from testbed.broker import Broker
from testbed.daemon import Replica, env_for
from testbed.replication import ReplicationPair, start_replication_pair
from testbed.sql import scalar
from testbed.subscriber import Subscriber
from testbed.waiting import wait_until
from tests.acceptance.test_replicas import insert_due, start

DATABASE = "jobpub"


@pytest.fixture
def pair() -> Iterator[ReplicationPair]:
    with start_replication_pair() as running:
        with psycopg.connect(running.primary.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DATABASE}"')
        migrate = subprocess.run(
            [sys.executable, "-m", "jobpub", "migrate"],
            env=env_for(running.url(DATABASE), "mqtt://127.0.0.1:1"),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        yield running


def test_a_replica_on_a_multi_host_url_publishes_from_the_promoted_standby(
    pair: ReplicationPair,
    broker: Broker,
    subscriber: Subscriber,
    tmp_path: Path,
    replicas: list[Replica],
) -> None:
    url = pair.url(DATABASE)
    replica = start(replicas, tmp_path, env_for(url, broker.url))
    wait_until(lambda: '"broker_connected"' in replica.log_text(), 20, "replica up")
    insert_due(url, f"{subscriber.prefix}/before", 5)
    subscriber.wait_for_jobs(5, 20)
    wait_until(lambda: scalar(url, "SELECT count(*) FROM jobs WHERE processed") == 5, 10,
               "the rows marked on the primary")  # fmt: skip
    # Every mark is on the standby before the crash: nothing is there to publish again.
    pair.wait_replayed(10)

    pair.stop_primary("immediate")
    # It notices (its LISTEN connection and its next claim fail) and is not ready.
    wait_until(lambda: '"database_unavailable"' in replica.log_text(), 10, "the loss noticed")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2).close()  # the standby takes no writes yet
    pair.promote_standby()
    promoted_at = time.monotonic()

    insert_due(url, f"{subscriber.prefix}/after", 5)  # into the promoted standby
    subscriber.wait_for_jobs(10, 30)
    wait_until(lambda: scalar(url, "SELECT count(*) FROM jobs WHERE processed") == 10, 10,
               "the new rows marked on the promoted standby")  # fmt: skip
    assert time.monotonic() - promoted_at <= 10, "published within 10 s of the promotion"
    assert scalar(url, "SELECT inet_server_port()") == pair.standby.port
    copies = collections.Counter(m.job_id for m in subscriber.snapshot())
    assert len(copies) == 10
    assert max(copies.values()) == 1, "a job was published twice"
    assert replica.process.poll() is None, "the replica rode the failover out"
    assert replica.log_text().count('"database_available"') >= 1
