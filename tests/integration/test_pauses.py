"""Pauses by MQTT topic filter, on real PostgreSQL and a real broker."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest

from jobpub.db import queries
from jobpub.db.pauses import InvalidFilter, list_pauses, pause, resume
from testbed.broker import Broker
from testbed.daemon import make_settings, running
from testbed.subscriber import Subscriber
from testbed.waiting import eventually
from tests.integration.test_schema_and_claim import opened_store

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

TOPICS = ["a", "a/", "a/b", "a/b/c", "a/x/c", "b", "x/b", "x/y/b/z", "/b", "$SYS", "$SYS/x",
          "x%_\\y", "xab\\y/z"]  # fmt: skip


@pytest.mark.parametrize(
    ("topic_filter", "paused"),
    [
        ("#", set(TOPICS) - {"$SYS", "$SYS/x"}),  # wildcards do not reach `$` topics
        ("a/#", {"a", "a/", "a/b", "a/b/c", "a/x/c"}),  # `#` takes the parent level too
        ("a/+", {"a/", "a/b"}),  # `+` is one level, an empty one included
        ("a/+/c", {"a/b/c", "a/x/c"}),
        ("+/b/#", {"a/b", "a/b/c", "x/b", "/b"}),  # not x/y/b/z: `+` is one level
        ("+", {"a", "b", "x%_\\y"}),
        ("+/+", {"a/", "a/b", "x/b", "/b", "xab\\y/z"}),
        ("$SYS/#", {"$SYS", "$SYS/x"}),
        ("x%_\\y", {"x%_\\y"}),  # LIKE's specials are plain characters in a filter
        ("/b", {"/b"}),
        ("b/#", {"b"}),
    ],
)
async def test_a_filter_pauses_exactly_the_topics_mqtt_matches(
    db_url: str, db: Conn, topic_filter: str, paused: set[str]
) -> None:
    for topic in TOPICS:
        await db.execute("INSERT INTO jobs (topic, payload) VALUES (%s, 'x')", (topic,))
    await db.execute("INSERT INTO pauses (filter) VALUES (%s)", (topic_filter,))
    async with opened_store(db_url, lookahead=0) as store:
        batch = await store.claim()
        claimed = {job.topic for job in batch.jobs}
        await store.release(batch)
    assert set(TOPICS) - claimed == paused


@pytest.mark.parametrize("topic_filter", ["", "a/#/b", "#/a", "a#", "a/b#", "a+", "+a/b", "a/++"])
async def test_what_is_not_an_mqtt_filter_is_refused(db_url: str, topic_filter: str) -> None:
    with pytest.raises(InvalidFilter):
        await pause(db_url, topic_filter, None)
    assert await list_pauses(db_url) == []


async def test_pause_resume_and_list(db_url: str) -> None:
    assert await pause(db_url, "site/+/valve/#", "maintenance")
    assert not await pause(db_url, "site/+/valve/#", None)  # already paused: reason kept
    [listed] = await list_pauses(db_url)
    assert (listed.filter, listed.reason) == ("site/+/valve/#", "maintenance")
    assert 0 <= listed.age_s < 60
    assert await resume(db_url, "site/+/valve/#")
    assert not await resume(db_url, "site/+/valve/#")
    assert await list_pauses(db_url) == []


async def test_with_a_hundred_filters_the_claim_still_walks_its_index_in_order(db: Conn) -> None:
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at) "
        "SELECT 'dev/' || i, 'p', now() - interval '1 min' FROM generate_series(1, 20000) i"
    )
    await db.execute(
        "INSERT INTO pauses (filter) "
        "SELECT 'site' || i || '/+/valve/#' FROM generate_series(1, 100) i"
    )
    await db.execute("ANALYZE")
    params = {"limit": 250, "lookahead": 0.02, "consumer_count": 1, "consumer_index": 0,
              "takeover_delay": 30.0, "lane": 3, "max_payload_bytes": 262144,
              "batch_max_bytes": 4194304}  # fmt: skip
    for claim, index in [
        (queries.CLAIM_DUE_JOBS, "jobs_pending_fire_at_idx"),
        (queries.CLAIM_DUE_JOBS_IN_LANE, "jobs_pending_lane_idx"),
    ]:
        async with db.transaction(force_rollback=True):
            await db.execute(queries.CLAIM_PLAN)
            cursor = await db.execute("EXPLAIN (FORMAT JSON) " + claim, params)
            row = await cursor.fetchone()
        assert row is not None
        plan = json.dumps(row[0])
        assert index in plan, plan
        assert "hashed SubPlan" in plan, "one hash probe per row, not a test of every filter"
        assert '"Node Type": "Sort"' not in plan, plan


def test_each_claim_statement_reads_the_pauses() -> None:
    assert queries.NOT_PAUSED in queries.CLAIM_DUE_JOBS
    assert queries.NOT_PAUSED in queries.CLAIM_DUE_JOBS_IN_LANE


async def _pending(db: Conn, pattern: str) -> int:
    cursor = await db.execute(
        "SELECT count(*) FROM jobs WHERE topic LIKE %s AND NOT processed", (pattern,)
    )
    row = await cursor.fetchone()
    return int(row[0]) if row else -1


async def test_a_pause_holds_across_replicas_and_a_resume_publishes_at_once(
    db_url: str, db: Conn, broker: Broker, subscriber: Subscriber
) -> None:
    # A long poll interval: only the resume's NOTIFY can wake the replicas in time.
    settings = make_settings(db_url, broker.url, poll_interval=30, heartbeat_interval=0.5,
                             replica_stale_after=5)  # fmt: skip
    paused_filter = subscriber.topic("valves/+/#")
    async with running(settings), running(settings), running(settings):
        await eventually(lambda: _replicas(db, 3), 10, "three replicas registered")
        # Rows that fall due after the pause, under the filter and outside it; the paused
        # ones first in claim order, so each claim that takes the others passed them by.
        await db.execute(
            "INSERT INTO jobs (topic, payload, fire_at) "
            "SELECT %s || i, 'p', now() + interval '1 s' FROM generate_series(1, 200) i",
            (subscriber.topic("valves/7/"),),
        )
        await db.execute(
            "INSERT INTO jobs (topic, payload, fire_at) "
            "SELECT %s || i, 'p', now() + interval '1.2 s' FROM generate_series(1, 200) i",
            (subscriber.topic("lamps/"),),
        )
        await db.execute(
            "INSERT INTO pauses (filter, reason) VALUES (%s, 'test')", (paused_filter,)
        )
        received = await asyncio.to_thread(subscriber.wait_for, 200, 20)
        assert all("/lamps/" in message.topic for message in received)
        await eventually(
            lambda: _none_pending(db, subscriber.topic("lamps/%")), 10, "the open rows marked"
        )
        assert await _pending(db, subscriber.topic("valves/%")) == 200  # due, paused, pending
        assert all("/lamps/" in message.topic for message in subscriber.snapshot())
        resumed = time.monotonic()
        await db.execute("DELETE FROM pauses WHERE filter = %s", (paused_filter,))
        await asyncio.to_thread(subscriber.wait_for_jobs, 400, 10)
        assert time.monotonic() - resumed < 10 < settings.poll_interval  # woken, not polled
    assert len(subscriber.snapshot()) == 400  # each row once


async def _replicas(db: Conn, count: int) -> bool:
    cursor = await db.execute("SELECT count(*) FROM jobpub_replicas")
    row = await cursor.fetchone()
    return row is not None and row[0] == count


async def _none_pending(db: Conn, pattern: str) -> bool:
    return await _pending(db, pattern) == 0


def test_the_cli_pauses_resumes_and_lists(db_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPUB_")}
    env.update(JOBPUB_DATABASE_URL=db_url, JOBPUB_LOG_FORMAT="json")

    def jobpub(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "jobpub", *args], env=env, text=True,
                              capture_output=True, timeout=60, check=False)  # fmt: skip

    assert jobpub("pause", "#", "--reason", "deploy").returncode == 0
    assert jobpub("pause", "devices/+/ota").returncode == 0
    listed = jobpub("pauses")
    assert listed.returncode == 0
    lines = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [(line[0], line[2]) for line in lines] == [("#", "deploy"), ("devices/+/ota", "")]
    refused = jobpub("pause", "a/#/b")
    assert refused.returncode == 2
    assert "not an MQTT topic filter" in refused.stderr
    assert jobpub("resume", "#").returncode == 0
    assert jobpub("resume", "#").returncode == 1  # no longer paused
    assert [line.split("\t")[0] for line in jobpub("pauses").stdout.splitlines()] == [
        "devices/+/ota"
    ]
