"""An adopted JobPublisher table full of rows no replica can publish, and two replicas."""

from __future__ import annotations

import collections
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import psycopg

from testbed.broker import Broker, free_port
from testbed.daemon import Replica, env_for
from testbed.subscriber import Subscriber
from testbed.waiting import wait_until

# JobPublisher's table, loosely typed as old tables are, with a qos column of its own.
LEGACY_TABLE = (
    "CREATE TABLE jobs (id serial PRIMARY KEY, topic text, payload text,"
    " fire_at timestamptz NOT NULL DEFAULT now(), processed boolean NOT NULL DEFAULT false,"
    " processed_at timestamptz, qos smallint NOT NULL DEFAULT 1)"
)
HUGE = 150 * 1024 * 1024  # loaded whole, it alone would take a replica past 300 MB


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def peak_rss_mb(replica: Replica) -> float:
    status = Path(f"/proc/{replica.process.pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmHWM:")]
    return int(line.split()[1]) / 1024


def test_two_replicas_settle_every_bad_row_of_an_adopted_table_and_stay_up(
    empty_db_url: str, broker: Broker, subscriber: Subscriber, tmp_path: Path
) -> None:
    prefix = subscriber.prefix
    bad = {  # (topic, payload, fire_at, qos) -> the reason it ends dead with
        (f"{prefix}/null-payload", None, "1999-01-01Z", 1): "payload is NULL",
        (None, "x", "1999-01-01Z", 1): "topic is NULL",
        (f"{prefix}/never", "x", "-infinity", 1): "fire_at is -infinity",
        (f"{prefix}/+/x", "x", "1999-01-01Z", 1): "wildcard",
        (f"{prefix}/#", "x", "1999-01-01Z", 1): "wildcard",
        ("", "x", "1999-01-01Z", 1): "topic is empty",
        (f"{prefix}/\x07bell", "x", "1999-01-01Z", 1): "control character",
        (f"{prefix}/qos", "x", "1999-01-01Z", 3): "qos 3 is not 0, 1 or 2",
    }
    good = [(f"{prefix}/good/{i}", f"ok {i}", "2000-01-01Z", 1) for i in range(200)]
    with psycopg.connect(empty_db_url, autocommit=True) as db:
        db.execute(LEGACY_TABLE)
        for row in [*bad, *good]:
            db.execute(
                "INSERT INTO jobs (topic, payload, fire_at, qos) VALUES (%s, %s, %s, %s)", row
            )
        db.execute(  # compressed on disk; loaded, it is 150 MiB
            "INSERT INTO jobs (topic, payload, fire_at)"
            " VALUES (%s, repeat('x', %s), '1999-01-01Z')",
            (f"{prefix}/huge", HUGE),
        )
    migrated = subprocess.run(
        [sys.executable, "-m", "jobpub", "migrate"],
        env=env_for(empty_db_url, broker.url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    with psycopg.connect(empty_db_url, autocommit=True) as db:
        # A row that ran out of attempts long ago, and rows inserted after adoption.
        db.execute("UPDATE jobs SET attempts = 2000 WHERE topic = %s", (f"{prefix}/good/0",))
        db.execute(
            "INSERT INTO jobs (topic, payload, fire_at)"
            " VALUES (%s, NULL, now()), (%s, 'late', now())",
            (f"{prefix}/null-after", f"{prefix}/good/late"),
        )
    ports = [free_port(), free_port()]
    replicas = [
        Replica(
            env_for(empty_db_url, broker.url, http_port=str(port), batch_size="50"),
            tmp_path / f"replica-{n}.log",
        )
        for n, port in enumerate(ports)
    ]
    try:
        subscriber.wait_for_jobs(len(good) + 1, 60)
        with psycopg.connect(empty_db_url, autocommit=True) as db:
            wait_until(
                lambda: (
                    _count(db, "failed_at IS NOT NULL") == len(bad) + 2
                    and _count(db, "processed") == len(good) + 1
                ),
                30,
                "every bad row dead and every good row processed",
            )
            dead: dict[int, str] = dict(
                db.execute(
                    "SELECT id, last_error FROM jobs WHERE failed_at IS NOT NULL ORDER BY id"
                ).fetchall()
            )
        for port in ports:
            wait_until(lambda p=port: ready(p), 10, f"replica on {port} ready")  # type: ignore[misc]
        for replica in replicas:
            assert replica.process.poll() is None, replica.log_text()
            assert peak_rss_mb(replica) < HUGE / 2**20, "a payload over the limit was loaded"
    finally:
        for replica in replicas:
            replica.close()
    reasons = list(dead.values())
    for expected in [*bad.values(), "over JOBPUB_MAX_PAYLOAD_BYTES", "payload is NULL"]:
        assert any(expected in reason for reason in reasons), (expected, reasons)
    assert all(reasons), "a dead row always carries its reason"
    copies = collections.Counter(m.topic for m in subscriber.snapshot())
    assert set(copies) == {g[0] for g in good} | {f"{prefix}/good/late"}
    assert max(copies.values()) == 1, "a row was published twice"


def _count(db: psycopg.Connection[tuple[int]], where: str) -> int:
    row = db.execute(f"SELECT count(*) FROM jobs WHERE {where}").fetchone()
    return int(row[0]) if row else 0
