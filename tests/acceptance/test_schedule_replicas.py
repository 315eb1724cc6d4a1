"""Recurring schedules across real `jobpub run` processes and a real broker."""

from __future__ import annotations

import collections
import itertools
from pathlib import Path
from typing import Any

import psycopg

from testbed.broker import Broker
from testbed.daemon import Replica, env_for
from testbed.subscriber import Subscriber
from testbed.waiting import wait_until


def query(db_url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def test_three_replicas_publish_each_occurrence_of_an_every_second_schedule_once(
    db_url: str, broker: Broker, subscriber: Subscriber, tmp_path: Path, replicas: list[Replica]
) -> None:
    for index in range(3):
        replica = Replica(
            env_for(db_url, broker.url, schedule_horizon="3"), tmp_path / f"replica-{index}.log"
        )
        replicas.append(replica)
    for replica in replicas:
        wait_until(lambda r=replica: '"broker_connected"' in r.log_text(), 20, "replica up")  # type: ignore[misc]
    query(
        db_url,
        "INSERT INTO schedules (name, topic, payload, every)"
        " VALUES ('heartbeat', %s, 'ping', interval '1 second')",
        subscriber.topic("ping"),
    )
    # A schedule the database could not check, while the fleet runs: it ends disabled,
    # no replica stops.
    query(
        db_url, "INSERT INTO schedules (name, topic, cron) VALUES ('broken', 'a/b', '* * 32 * *')"
    )
    subscriber.wait_for_jobs(12, 40)
    query(db_url, "DELETE FROM schedules WHERE name = 'heartbeat'")
    wait_until(
        lambda: (
            not query(
                db_url,
                "SELECT 1 FROM jobs WHERE schedule_name = 'heartbeat' AND NOT processed",
            )
        ),
        20,
        "the deleted schedule's pending rows gone or published",
    )
    published = query(
        db_url,
        "SELECT id, extract(epoch FROM occurrence_at)::float8, extract(epoch FROM processed_at)"
        "::float8 FROM jobs WHERE schedule_name = 'heartbeat' ORDER BY occurrence_at",
    )
    wait_until(lambda: subscriber.distinct_jobs() >= {i for i, *_ in published}, 10, "all in")
    copies = collections.Counter(m.job_id for m in subscriber.snapshot())
    assert set(copies) == {job_id for job_id, *_ in published}
    assert max(copies.values()) == 1, "an occurrence was published twice"
    occurrences = [occurrence for _, occurrence, _ in published]
    assert len(occurrences) >= 12
    # One row per second, none skipped between the first and the last.
    assert [b - a for a, b in itertools.pairwise(occurrences)] == [1.0] * (len(occurrences) - 1)
    arrivals = {m.job_id: m.arrived_at for m in subscriber.snapshot()}
    assert all(arrivals[job_id] >= occurrence for job_id, occurrence, _ in published), "early"

    ((enabled, reason),) = query(
        db_url, "SELECT enabled, disabled_reason FROM schedules WHERE name = 'broken'"
    )
    assert not enabled
    assert "invalid cron expression" in reason
    assert all(replica.process.poll() is None for replica in replicas), "a replica stopped"
    logs = "".join(replica.log_text() for replica in replicas)
    assert logs.count('"schedule_disabled"') == 1
