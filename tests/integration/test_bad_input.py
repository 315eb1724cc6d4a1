"""Property: whatever a producer inserts is refused at INSERT or settles; valid rows flow.

Each example inserts a mix of hostile rows around valid sentinel rows, runs the daemon
against the real database and broker, and checks that every due row that got in ends
published or dead with its reason, and that every sentinel arrived.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed.broker import Broker
from testbed.daemon import make_settings, running
from testbed.subscriber import Subscriber
from testbed.waiting import eventually

Conn = psycopg.AsyncConnection[tuple[Any, ...]]

hostile_topics = st.one_of(
    st.text(max_size=40),
    st.sampled_from([
        "", "+", "#", "a/+/b", "a/#", "$SYS/jobpub", "$share/x/y", "/", "//", "a" * 65_536,
        "é" * 32_768, "/".join(["level"] * 500), "a\x00b", "a\x01b", "a\x7fb", "a\u0085b",
        "a\ufffeb", "a\uffffb", "tab\there", "emoji/🛰️",
    ]),
)  # fmt: skip
payloads = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["", "x" * 2_000_000, "nul\x00byte", '{"json": true}']),
    st.none(),
)
qos_values = st.one_of(st.integers(min_value=-3, max_value=5), st.none())
# (absolute timestamp, or None) and (offset from now(), or None): both passed as parameters
fire_ats = st.one_of(
    st.tuples(
        st.sampled_from(["-infinity", "infinity", "2000-01-01 00:00:00+14", "1970-01-01 00:00Z"]),
        st.none(),
    ),
    st.tuples(st.none(), st.sampled_from(["-30 years", "-1 second", "0", "100 years"])),
    st.just((None, None)),
)
rows = st.lists(st.tuples(hostile_topics, payloads, qos_values, fire_ats), max_size=10)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=rows)
async def test_any_insert_is_refused_or_settles_and_valid_rows_flow(
    db_url: str, broker: Broker, subscriber: Subscriber, rows: list[tuple[Any, ...]]
) -> None:
    marker = uuid.uuid4().hex[:8]
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as db:
        await db.execute("TRUNCATE jobs")
        refusals: list[str] = []
        for topic, payload, qos, fire_at in rows:
            try:
                await db.execute(
                    "INSERT INTO jobs (topic, payload, qos, fire_at) VALUES (%s, %s, %s,"
                    " coalesce(%s::timestamptz, now() + coalesce(%s::interval, '0')))",
                    (topic, payload, qos, *fire_at),
                )
            except (psycopg.errors.IntegrityError, psycopg.DataError) as refused:
                refusals.append(str(refused))
        assert all(refusals), "a refusal always says why"
        sentinels = [subscriber.topic(f"sentinel/{marker}/{i}") for i in range(3)]
        for topic in sentinels:
            await db.execute("INSERT INTO jobs (topic, payload) VALUES (%s, %s)", (topic, marker))

        async with running(make_settings(db_url, broker.url, retry_backoff=0.05, max_attempts=2)):
            await eventually(lambda: _all_due_settled(db), 30, "every due row settled")
        cursor = await db.execute(
            "SELECT count(*) FROM jobs"
            " WHERE failed_at IS NOT NULL AND coalesce(last_error, '') = ''"
        )
        assert await cursor.fetchone() == (0,), "a dead row always carries its reason"
    await eventually(
        lambda: _arrived(subscriber, sentinels), 10, "every valid sentinel row published"
    )


async def _all_due_settled(db: Conn) -> bool:
    cursor = await db.execute(
        "SELECT count(*) FROM jobs WHERE NOT processed AND failed_at IS NULL AND fire_at <= now()"
    )
    row = await cursor.fetchone()
    return row == (0,)


async def _arrived(subscriber: Subscriber, topics: list[str]) -> bool:
    seen = {m.topic for m in subscriber.snapshot()}
    return all(topic in seen for topic in topics)
