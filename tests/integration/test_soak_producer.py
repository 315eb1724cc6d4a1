"""The soak's producer: the rows it inserts fall due when the subscriber's count thinks.

The soak's `early` count compares each arrival with bench.soak_verdicts.Schedule.fire_at;
if the producer's INSERT computed fire_at otherwise, early jobs would go unseen (or
punctual ones be called early).
"""

from __future__ import annotations

import time

import psycopg
import pytest

from bench.soak import PREFIX, Producer
from bench.soak_verdicts import Schedule


def test_every_inserted_row_is_due_when_the_schedule_says(db_url: str) -> None:
    schedule = Schedule(batch_size=50)
    producer = Producer(db_url, schedule, batches=3)
    producer.start(time.time())
    producer.join(timeout=30)

    assert producer.produced() == 150
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT id, topic, extract(epoch FROM fire_at)::float8 FROM jobs ORDER BY id"
        ).fetchall()
    assert [row[0] for row in rows] == list(range(1, 151))
    for job_id, topic, fire_at in rows:
        assert topic == f"{PREFIX}/{job_id}"
        expected = Schedule.fire_at(job_id, producer.inserted_at[schedule.batch_of(job_id)])
        assert fire_at == pytest.approx(expected, abs=1e-6)
