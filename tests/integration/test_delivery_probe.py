"""The end-to-end delivery probe on real PostgreSQL and a real Mosquitto: probes go out as
jobs, one elected replica receives them, and an ACL that drops them shows as missing."""

from __future__ import annotations

import io
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobpub.db.database import KEEPALIVE_IDLE, TCP_USER_TIMEOUT_MS
from jobpub.db.probes import ProbeSeat
from jobpub.metrics import Metrics
from jobpub.mqtt import PROTOCOL_V5, PROTOCOL_V311, InboundMessage, Message, MqttConnection
from testbed.broker import Broker, start_broker
from testbed.daemon import env_for, make_settings, running
from testbed.sql import scalar, scalar_async
from testbed.waiting import eventually
from tests.integration.test_security import login_role

FAST = {"probe_interval": 1.0, "probe_timeout": 1.5}


async def probe_status(db_url: str) -> dict[str, Any]:
    async with await psycopg.AsyncConnection.connect(db_url) as conn:
        cursor = await conn.execute("SELECT * FROM latest_probe_status()")
        row = await cursor.fetchone()
        assert row is not None
        return dict(zip([c.name for c in cursor.description or []], row, strict=True))


def sample(metrics: Metrics, name: str) -> float:
    value = metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


@pytest.mark.parametrize("version", [PROTOCOL_V5, PROTOCOL_V311])
async def test_a_subscription_receives_qos1_messages_and_acks_them(
    broker: Broker, version: int
) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}/probe"
    received: list[InboundMessage] = []
    async with MqttConnection(
        "127.0.0.1", broker.port, client_id=f"sub-{uuid.uuid4().hex[:8]}", protocol=version,
        on_message=received.append,
    ) as subscriber:  # fmt: skip
        assert await subscriber.subscribe(topic, qos=1) == 1
        async with MqttConnection(
            "127.0.0.1", broker.port, client_id=f"pub-{uuid.uuid4().hex[:8]}"
        ) as publisher:
            answers = await publisher.publish([Message(topic, b"one", qos=1),
                                               Message(topic, b"two", qos=0)])  # fmt: skip
            assert all(not isinstance(a, Exception) and a.accepted for a in answers)
        await eventually(lambda: len(received) == 2, 10, "both messages")
        assert [(m.topic, m.payload) for m in received] == [(topic, b"one"), (topic, b"two")]
        assert received[0].qos == 1
        # Acked: the broker would hold (and resend) an unacknowledged QoS 1 message, and
        # the connection stays open with nothing outstanding.
        assert subscriber.is_open


async def test_two_replicas_one_subscriber_one_probe_per_slot_latency_recorded(
    db_url: str, broker: Broker
) -> None:
    topic = f"t{uuid.uuid4().hex[:10]}/probe"
    settings = make_settings(db_url, broker.url, probe_topic=topic, **FAST)
    async with running(settings) as first, running(settings) as second:
        await eventually(
            lambda: scalar_async(
                db_url, "SELECT count(*) >= 4 FROM delivery_probes WHERE received_at IS NOT NULL"
            ),
            30,
            "four probes received",
        )
        subscribers = [sample(m, "jobpub_probe_subscriber") for m in (first, second)]
        assert sorted(subscribers) == [0.0, 1.0], "exactly one replica is the subscriber"
        elected = (first, second)[subscribers.index(1.0)]
        assert sample(elected, "jobpub_probe_latency_seconds_count") >= 4
        status = await probe_status(db_url)

    # One jobs row per slot, each on a whole second (the interval), however many replicas.
    slots = await scalar_async(
        db_url,
        "SELECT array_agg(fire_at ORDER BY fire_at) FROM jobs "
        "WHERE dedupe_key LIKE 'jobpub-probe:%'",
    )
    assert len(slots) == len(set(slots))
    assert all(slot.microsecond == 0 for slot in slots)
    assert await scalar_async(db_url, "SELECT count(*) FROM delivery_probes") == len(slots)
    assert await scalar_async(db_url, "SELECT count(DISTINCT topic) FROM jobs") == 1
    assert status["missing"] == 0
    assert status["received"] >= 4
    # Received within a second of its fire_at on an idle machine; never before it.
    assert 0 <= status["last_latency_s"] < 5
    assert await scalar_async(
        db_url,
        "SELECT bool_and(received_at >= fire_at) FROM delivery_probes "
        "WHERE received_at IS NOT NULL",
    )


@pytest.mark.parametrize(("protocol", "state"), [("3.1.1", "published"), ("5", "dead")])
async def test_an_acl_that_drops_probes_makes_them_missing(
    db_url: str, tmp_path: Path, protocol: str, state: str
) -> None:
    # The probe topic may be read (the subscriber's SUBSCRIBE succeeds) but not written.
    acl = tmp_path / "acl"
    acl.write_text("topic read denied/probe\n")
    with start_broker(tmp_path / "broker", f"acl_file {acl}") as broker:
        settings = make_settings(
            db_url, broker.url, probe_topic="denied/probe", mqtt_protocol=protocol, **FAST
        )
        async with running(settings) as metrics:
            await eventually(
                lambda: sample(metrics, "jobpub_probes_missing_total") >= 2, 30, "missing probes"
            )
            assert sample(metrics, "jobpub_probe_subscriber") == 1
            status = await probe_status(db_url)
    assert status["missing"] >= 2
    assert status["received"] == 0
    assert status["last_received_at"] is None
    # MQTT 3.1.1: Mosquitto denied the message and still acknowledged it (PUBACK carries no
    # reason code), so the job is marked published: only the probe can tell it never came.
    # MQTT 5: the PUBACK says "not authorized" (0x87) and the job is dead.
    states = await scalar_async(
        db_url,
        "SELECT array_agg(DISTINCT j.state) FROM delivery_probes p JOIN jobs j "
        "ON j.id = p.job_id WHERE p.missing_at IS NOT NULL",
    )
    assert states == [state]


async def test_a_paused_probe_is_late_not_missing(db_url: str, broker: Broker) -> None:
    # Never published (a pause holds it): a backlog or a pause shows in other numbers;
    # missing means the broker took the probe, or refused it, and it never arrived.
    topic = f"t{uuid.uuid4().hex[:10]}"
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        await conn.execute("INSERT INTO pauses (filter) VALUES (%s)", (f"{topic}/probe",))
    settings = make_settings(db_url, broker.url, probe_topic=f"{topic}/probe", **FAST)
    async with running(settings) as metrics:
        await eventually(
            lambda: scalar_async(
                db_url,
                "SELECT count(*) >= 1 FROM delivery_probes WHERE fire_at < now() - interval '3 s'",
            ),
            15,
            "a probe 3 s overdue",
        )
        assert sample(metrics, "jobpub_probe_subscriber") == 1
        assert sample(metrics, "jobpub_probes_missing_total") == 0
    assert await scalar_async(db_url, "SELECT count(*) FROM jobs WHERE state <> 'pending'") == 0


async def test_the_probe_runs_as_the_least_privileged_role(
    db_url: str, db: psycopg.AsyncConnection[tuple[object, ...]], broker: Broker,
    info_logs: io.StringIO,
) -> None:  # fmt: skip
    topic = f"t{uuid.uuid4().hex[:10]}/probe"
    await db.execute("SELECT jobpub_allow_probe_topic(%s)", (topic,))
    # A probe two days old: the sweep deletes it (after marking), as the daemon.
    await db.execute(
        "INSERT INTO delivery_probes (probe_key, topic, fire_at, job_id) "
        "VALUES ('jobpub-probe:1', %s, now() - interval '2 days', 0)",
        (topic,),
    )
    async with login_role(db, db_url, "IN ROLE jobpub_daemon") as (_, as_daemon):
        settings = make_settings(as_daemon, broker.url, probe_topic=topic, **FAST)
        async with running(settings) as metrics:
            # Recorded as the daemon: the latency is observed only from the UPDATE's row.
            await eventually(
                lambda: sample(metrics, "jobpub_probe_latency_seconds_count") >= 2, 20, "2 probes"
            )
            await eventually(
                lambda: scalar_async(
                    db_url, "SELECT count(*) = 0 FROM delivery_probes WHERE job_id = 0"
                ),
                10,
                "a sweep (and the day's clean-up) as the daemon",
            )
    assert "probe_subscriber_failed" not in info_logs.getvalue()
    assert "probe_schedule" not in info_logs.getvalue()  # failures are warnings: logged
    assert await scalar_async(
        db_url, "SELECT count(*) >= 2 FROM delivery_probes WHERE received_at IS NOT NULL"
    )


def test_migrate_allows_the_configured_probe_topic(db_url: str) -> None:
    """`jobpub migrate` runs as the owner: with JOBPUB_PROBE_TOPIC set it allows that topic,
    so a fleet of jobpub_daemon replicas probes without a hand-run statement."""
    env = env_for(db_url, "mqtt://127.0.0.1:1883", probe_topic="ops/probe")
    done = subprocess.run([sys.executable, "-m", "jobpub", "migrate"], env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "probe_topic_allowed" in done.stderr + done.stdout
    assert scalar(db_url, "SELECT topic FROM delivery_probe_topic") == "ops/probe"


async def test_the_daemon_may_schedule_probes_only_on_the_allowed_topic(
    db_url: str, db: psycopg.AsyncConnection[tuple[object, ...]]
) -> None:
    async with (
        login_role(db, db_url, "IN ROLE jobpub_daemon") as (_, as_daemon),
        await psycopg.AsyncConnection.connect(as_daemon, autocommit=True) as daemon,
    ):
        schedule = "SELECT jobpub_schedule_probe(%s, %s)"
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="none"):
            await daemon.execute(schedule, ("devices/1/valve", 30))
        await db.execute("SELECT jobpub_allow_probe_topic('jobpub/probe')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="'jobpub/probe'"):
            await daemon.execute(schedule, ("devices/1/valve", 30))
        for topic, every_s, problem in [
            ("jobpub/+", 30, "wildcard"),
            ("", 30, "empty"),
            ("jobpub/probe", 0.001, "0.5 to 86400"),
        ]:
            with pytest.raises(psycopg.errors.InvalidParameterValue, match=problem):
                await daemon.execute(schedule, (topic, every_s))
        await daemon.execute(schedule, ("jobpub/probe", 30))
    # The owner (who may insert jobs itself) gains nothing by it: any valid topic.
    await db.execute("SELECT jobpub_schedule_probe('devices/2/valve', 3600)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="wildcard"):
        await db.execute("SELECT jobpub_allow_probe_topic('devices/#')")
    topics = await scalar_async(db_url, "SELECT array_agg(topic ORDER BY topic) FROM jobs")
    assert topics == ["devices/2/valve", "jobpub/probe"]


async def test_a_probe_slot_scheduled_again_after_a_cancel_tracks_its_new_job(
    db_url: str, db: psycopg.AsyncConnection[tuple[object, ...]]
) -> None:
    schedule = "SELECT jobpub_schedule_probe('jobpub/probe', 86400)"
    first = await scalar_async(db_url, schedule)
    await db.execute("DELETE FROM jobs")  # what `jobpub cancel` does to a pending job
    again = await scalar_async(db_url, schedule)
    assert again == first, "the same slot (unless the day turned between the calls)"
    linked = await scalar_async(
        db_url, "SELECT count(*) FROM delivery_probes p JOIN jobs j ON j.id = p.job_id"
    )
    assert linked == 1


async def test_only_probes_published_while_subscribed_count_missing(
    db_url: str, db: psycopg.AsyncConnection[tuple[object, ...]]
) -> None:
    seat = ProbeSeat(db_url, hold_timeout=45)
    try:
        assert await seat.try_lead()
        since = await seat.database_now()
        # before: due and published before the subscription (a failover's gap);
        # after: due and published once subscribed; refused: dead before it, refused anyway.
        await db.execute(
            """
            WITH j AS (
                INSERT INTO jobs (topic, payload, fire_at, dedupe_key, processed, processed_at,
                                  failed_at)
                VALUES ('p', 'jobpub-probe:1', %(since)s - interval '6 s', 'jobpub-probe:1',
                        true, %(since)s - interval '5 s', NULL),
                       ('p', 'jobpub-probe:2', clock_timestamp(), 'jobpub-probe:2',
                        true, clock_timestamp(), NULL),
                       ('p', 'jobpub-probe:3', %(since)s - interval '1 h', 'jobpub-probe:3',
                        false, NULL, %(since)s - interval '1 h')
                RETURNING id, dedupe_key, fire_at
            )
            INSERT INTO delivery_probes (probe_key, topic, fire_at, job_id)
            SELECT dedupe_key, 'p', fire_at, id FROM j
            """,
            {"since": since},
        )
        assert await seat.mark_missing(0.0, since) == 2
    finally:
        await seat.resign()
    missing = await scalar_async(
        db_url,
        "SELECT array_agg(probe_key ORDER BY probe_key) FROM delivery_probes "
        "WHERE missing_at IS NOT NULL",
    )
    assert missing == ["jobpub-probe:2", "jobpub-probe:3"]


async def test_the_election_session_carries_the_session_limits(db_url: str) -> None:
    seat = ProbeSeat(db_url, hold_timeout=7.5)
    try:
        assert await seat.try_lead()
        connection = seat._connection
        assert connection is not None
        settings = await connection.execute(
            "SELECT current_setting('statement_timeout'), current_setting('tcp_keepalives_idle'),"
            " current_setting('tcp_user_timeout')"
        )
        # The server drops a holder gone silent (and its lock) in about 25 s, not hours.
        assert await settings.fetchone() == (
            "7500ms",
            str(KEEPALIVE_IDLE),
            str(TCP_USER_TIMEOUT_MS),
        )
    finally:
        await seat.resign()
