"""Real `jobpub run` processes side by side: scale-out, SIGKILL, SIGTERM, bad settings."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from testbed.broker import Broker
from testbed.daemon import Replica, env_for
from testbed.sql import scalar
from testbed.subscriber import Subscriber
from testbed.waiting import wait_until


def start(replicas: list[Replica], tmp_path: Path, env: dict[str, str]) -> Replica:
    replica = Replica(env, tmp_path / f"replica-{len(replicas)}.log")
    replicas.append(replica)
    return replica


def insert_due(db_url: str, prefix: str, count: int, offset: str = "-1 s") -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (topic, payload, fire_at) "
            "SELECT %s || '/' || i, i::text, now() + %s::interval FROM generate_series(1, %s) i",
            (prefix, offset, count),
        )


def locked_rows(db_url: str) -> int:
    """Rows some other transaction holds locked (claimed)."""
    with psycopg.connect(db_url) as conn:
        total = conn.execute("SELECT count(*) FROM jobs").fetchone()
        free = conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM jobs FOR UPDATE SKIP LOCKED) AS free"
        ).fetchone()
        assert total is not None
        assert free is not None
        return int(total[0]) - int(free[0])


def test_four_replicas_publish_10000_jobs_exactly_once(
    db_url: str, broker: Broker, subscriber: Subscriber, tmp_path: Path, replicas: list[Replica]
) -> None:
    for _ in range(4):
        start(replicas, tmp_path, env_for(db_url, broker.url, batch_size="500"))
    for replica in replicas:
        wait_until(lambda r=replica: '"broker_connected"' in r.log_text(), 20, "replica up")  # type: ignore[misc]
    insert_due(db_url, subscriber.prefix, 10_000)
    subscriber.wait_for_jobs(10_000, 90)
    wait_until(
        lambda: scalar(db_url, "SELECT count(*) FROM jobs WHERE processed") == 10_000,
        30,
        "every row marked processed",
    )
    copies = collections.Counter(m.job_id for m in subscriber.snapshot())
    assert len(copies) == 10_000
    assert max(copies.values()) == 1, "a job was published twice"
    # The replicas competed for the rows (SKIP LOCKED), not took turns.
    workers = [r for r in replicas if '"batch_published"' in r.log_text()]
    assert len(workers) >= 2


def test_sigkilled_replica_loses_nothing(
    db_url: str, broker: Broker, subscriber: Subscriber, tmp_path: Path, replicas: list[Replica]
) -> None:
    total = 20_000
    insert_due(db_url, subscriber.prefix, total)
    victim = start(replicas, tmp_path, env_for(db_url, broker.url, batch_size="2000"))
    wait_until(lambda: subscriber.count() > 0, 30, "the victim to start publishing")
    victim.kill()  # mid-batch: claimed rows locked, some published, none committed yet
    published_by_victim = scalar(db_url, "SELECT count(*) FROM jobs WHERE processed")
    assert published_by_victim < total, "the victim finished before it was killed"
    start(replicas, tmp_path, env_for(db_url, broker.url))
    wait_until(
        lambda: scalar(db_url, "SELECT count(*) FROM jobs WHERE processed") == total,
        60,
        "the survivor to publish everything",
    )
    assert len(subscriber.wait_for_jobs(total, 30)) == total


def test_sigterm_drains_and_exits_zero(
    db_url: str, broker: Broker, subscriber: Subscriber, tmp_path: Path, replicas: list[Replica]
) -> None:
    replica = start(replicas, tmp_path, env_for(db_url, broker.url))
    wait_until(lambda: '"broker_connected"' in replica.log_text(), 20, "replica connected")
    insert_due(db_url, subscriber.prefix, 5000)
    wait_until(lambda: subscriber.count() > 0, 20, "publishing to start")
    replica.signal(signal.SIGTERM)
    assert replica.wait(30) == 0
    log = replica.log_text()
    assert '"stopping"' in log
    assert '"stopped"' in log
    # Nothing is left locked or half done: every row is processed or claimable.
    assert locked_rows(db_url) == 0
    processed = scalar(db_url, "SELECT count(*) FROM jobs WHERE processed")
    assert 0 < processed <= 5000
    assert len({m.job_id for m in subscriber.snapshot()}) >= processed


def test_second_signal_exits_at_once_and_rolls_back(
    db_url: str, broker: Broker, subscriber: Subscriber, tmp_path: Path, replicas: list[Replica]
) -> None:
    # A job held for its time (lookahead) keeps the batch in flight; the drain would wait.
    env = env_for(db_url, broker.url, lookahead="8", shutdown_timeout="60")
    replica = start(replicas, tmp_path, env)
    wait_until(lambda: '"broker_connected"' in replica.log_text(), 20, "replica connected")
    insert_due(db_url, subscriber.prefix, 1, offset="6 s")
    wait_until(lambda: locked_rows(db_url) == 1, 20, "the job to be claimed and held")
    replica.signal(signal.SIGTERM)
    wait_until(lambda: '"draining"' in replica.log_text(), 10, "the drain to begin")
    replica.signal(signal.SIGTERM)
    assert replica.wait(5) == 128 + signal.SIGTERM
    assert scalar(db_url, "SELECT count(*) FROM jobs WHERE processed") == 0
    assert subscriber.count() == 0
    # The rolled-back job is not lost: the next replica publishes it at its time.
    start(replicas, tmp_path, env_for(db_url, broker.url))
    [message] = subscriber.wait_for(1, 20)
    assert message.job_id is not None


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("JOBPUB_MQTT_URL", "http://broker:1883", "JOBPUB_MQTT_URL: must start with mqtt://"),
        ("JOBPUB_DATABASE_URL", "mysql://x/y", "JOBPUB_DATABASE_URL: must start with postgresql"),
        (
            "JOBPUB_BATCH_SIZE",
            "-5",
            "JOBPUB_BATCH_SIZE: Input should be greater than or equal to 1",
        ),
        ("JOBPUB_CONSUMER_INDEX", "2", "JOBPUB_CONSUMER_INDEX (2) must be below"),
        ("JOBPUB_POLL_INTERVAL", "soon", "JOBPUB_POLL_INTERVAL: Input should be a valid number"),
    ],
)
def test_bad_settings_give_one_line_and_exit_2(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    env = env_for("postgresql://db.invalid/jobs", "mqtt://broker.invalid", consumer_count="2")
    env[variable] = value
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
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "db.invalid" not in lines[0], "values (which may hold secrets) are not echoed"


def test_credentials_never_reach_the_logs(
    db_url: str, broker: Broker, subscriber: Subscriber, tmp_path: Path, replicas: list[Replica]
) -> None:
    # Trust authentication and an anonymous broker accept any password: a real run.
    secret_db = db_url.replace("postgres@", "postgres:db-Secret-42@")
    secret_mqtt = broker.url.replace("mqtt://", "mqtt://someone:mqtt-Secret-42@")
    replica = start(replicas, tmp_path, env_for(secret_db, secret_mqtt))
    insert_due(db_url, subscriber.prefix, 3)
    subscriber.wait_for_jobs(3, 20)
    replica.signal(signal.SIGTERM)
    assert replica.wait(20) == 0
    log = replica.log_text()
    assert "postgresql://postgres:***@127.0.0.1" in log  # the URLs are logged, redacted
    assert "mqtt://someone@127.0.0.1" in log
    assert "Secret-42" not in log
