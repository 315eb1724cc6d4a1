"""TLS, passwords, secrets from files, the topic allow-list, the daemon role, requeue."""

from __future__ import annotations

import asyncio
import contextlib
import io
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobpub.cli import main
from jobpub.settings import Settings
from testbed.broker import Broker, start_broker
from testbed.daemon import make_settings, running
from testbed.subscriber import Subscriber
from testbed.tls import make_certificates
from testbed.waiting import eventually, in_file, logged

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


def secure_broker_config(directory: Path) -> str:
    """A TLS-only listener requiring a client certificate and a password."""
    certs = make_certificates(directory / "certs")
    passwords = directory / "passwords"
    passwords.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "device", "s3cret-pass"],
                   check=True, capture_output=True)  # fmt: skip
    passwords.chmod(0o644)
    return "\n".join([
        "allow_anonymous false",
        f"password_file {passwords}",
        f"cafile {certs.ca}",
        f"certfile {certs.server_cert}",
        f"keyfile {certs.server_key}",
        "require_certificate true",
    ])  # fmt: skip


def secure_settings(db_url: str, certs: Path, broker: Broker, password: str) -> Settings:
    """jobpub's settings for the secure broker: TLS, client certificate, `device`'s password."""
    return make_settings(
        db_url,
        f"mqtts://device:{password}@127.0.0.1:{broker.port}",
        mqtt_ca_file=certs / "ca.pem",
        mqtt_cert_file=certs / "client.pem",
        mqtt_key_file=certs / "client.key",
    )


async def pending(db: Conn) -> int:
    cursor = await db.execute("SELECT count(*) FROM jobs WHERE NOT processed AND failed_at IS NULL")
    row = await cursor.fetchone()
    return int(row[0]) if row else -1


async def test_mqtts_with_client_certificate_and_password(
    db_url: str, db: Conn, tmp_path: Path
) -> None:
    with start_broker(tmp_path / "broker", secure_broker_config(tmp_path)) as broker:
        settings = secure_settings(db_url, tmp_path / "certs", broker, "s3cret-pass")
        await db.execute("INSERT INTO jobs (topic, payload) VALUES ('secure/1', 'x')")
        async with running(settings) as metrics:
            await eventually(lambda: _none_pending(db), 15, "the job published over TLS")
        assert "jobpub_broker_disconnects_total 0.0" in metrics.render().decode()


async def _none_pending(db: Conn) -> bool:
    return await pending(db) == 0


async def test_wrong_mqtt_password_is_not_ready_and_does_not_crash(
    db_url: str, db: Conn, tmp_path: Path, info_logs: io.StringIO
) -> None:
    with start_broker(tmp_path / "broker", secure_broker_config(tmp_path)) as broker:
        settings = secure_settings(db_url, tmp_path / "certs", broker, "wrong-pass")
        await db.execute("INSERT INTO jobs (topic, payload) VALUES ('secure/1', 'x')")
        async with running(settings) as metrics:
            await eventually(
                in_file(broker.directory / "mosquitto.log", "not authorised", 3),
                15,
                "several connection attempts refused",
            )
            assert "jobpub_broker_up 0.0" in metrics.render().decode()
        assert await pending(db) == 1, "nothing is claimed without a broker"
    text = info_logs.getvalue()
    # Mosquitto says "not authorized" for a wrong password; said once, not per retry.
    assert text.count("broker refused the connection: not authorized") == 1
    assert "wrong-pass" not in text


async def test_topic_allow_list_sends_other_rows_dead(
    db_url: str, db: Conn, broker: Broker, subscriber: Subscriber
) -> None:
    allowed = subscriber.topic("tenant-a/")
    await db.execute(
        "INSERT INTO jobs (topic, payload) VALUES (%s, 'yes'), (%s, 'no'), ('$SYS/x', 'no')",
        (allowed + "valve", subscriber.topic("tenant-b/valve")),
    )
    async with running(make_settings(db_url, broker.url, topic_prefixes=allowed)):
        await asyncio.to_thread(subscriber.wait_for, 1, 10)
        await eventually(lambda: _none_pending(db), 10, "every row settled")
    cursor = await db.execute("SELECT payload, processed, last_error FROM jobs ORDER BY id")
    rows = await cursor.fetchall()
    assert rows[0] == ("yes", True, None)
    assert [r[1:] for r in rows[1:]] == [(False, "topic is outside JOBPUB_TOPIC_PREFIXES")] * 2
    assert [m.payload for m in subscriber.snapshot()] == [b"yes"]


def test_secret_files_and_requeue_command(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO jobs (topic, payload, failed_at, attempts, last_error) VALUES "
            "('a', 'x', now(), 5, 'gave up'), ('b', 'x', now(), 5, 'gave up'),"
            " ('c', 'x', NULL, 0, NULL)"
        )
    url_file = tmp_path / "database_url"
    url_file.write_text(db_url + "\n")
    monkeypatch.delenv("JOBPUB_DATABASE_URL", raising=False)
    monkeypatch.setenv("JOBPUB_DATABASE_URL_FILE", str(url_file))
    monkeypatch.setenv("JOBPUB_LOG_FORMAT", "json")
    assert main(["requeue", "1"]) == 0
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT id, failed_at IS NULL, attempts FROM jobs ORDER BY id"
        ).fetchall()
    assert rows == [(1, True, 0), (2, False, 5), (3, True, 0)]
    assert main(["requeue", "--all"]) == 0
    with psycopg.connect(db_url) as conn:
        dead = conn.execute("SELECT count(*) FROM jobs WHERE failed_at IS NOT NULL").fetchone()
    assert dead == (0,)
    monkeypatch.setenv("JOBPUB_DATABASE_URL_FILE", str(tmp_path / "missing"))
    assert main(["requeue", "--all"]) == 2


async def test_daemon_runs_as_the_least_privileged_role(
    db_url: str, db: Conn, broker: Broker, subscriber: Subscriber
) -> None:
    async with login_role(db, db_url, "IN ROLE jobpub_daemon") as (_, as_daemon):
        await db.execute(
            "INSERT INTO jobs (topic, payload) VALUES (%s, 'as daemon')",
            (subscriber.topic("role"),),
        )
        async with running(make_settings(as_daemon, broker.url)):
            await asyncio.to_thread(subscriber.wait_for, 1, 10)
            await eventually(lambda: _none_pending(db), 10, "the row marked")
        async with await psycopg.AsyncConnection.connect(as_daemon, autocommit=True) as conn:
            for statement in (
                "INSERT INTO jobs (topic) VALUES ('x')",
                "DELETE FROM jobs",
                "UPDATE jobs SET topic = 'y'",
                "SELECT * FROM jobpub_migrations",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    await conn.execute(statement)


async def test_a_role_without_privileges_is_not_ready_then_recovers_when_granted(
    db_url: str, db: Conn, broker: Broker, subscriber: Subscriber, info_logs: io.StringIO
) -> None:
    async with login_role(db, db_url) as (user, as_user):
        await db.execute(
            "INSERT INTO jobs (topic, payload) VALUES (%s, 'after grant')",
            (subscriber.topic("grant"),),
        )
        async with running(make_settings(as_user, broker.url)) as metrics:
            await eventually(logged(info_logs, '"claim_failed"'), 10, "the failed claim logged")
            await eventually(lambda: _rolled_back(db, 3), 15, "several claims refused")
            assert "jobpub_database_up 0.0" in metrics.render().decode()
            await db.execute(f"GRANT jobpub_daemon TO {user}")
            await asyncio.to_thread(subscriber.wait_for, 1, 20)
        text = info_logs.getvalue()
        assert text.count('"claim_failed"') == 1, "said once, not per retry"
        assert "permission denied" in text


async def _rolled_back(db: Conn, at_least: int) -> bool:
    """Transactions rolled back in this database (a refused claim is one); stats lag ~1 s."""
    cursor = await db.execute(
        "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"
    )
    row = await cursor.fetchone()
    return row is not None and row[0] >= at_least


@contextlib.asynccontextmanager
async def login_role(db: Conn, db_url: str, options: str = "") -> AsyncIterator[tuple[str, str]]:
    """A throwaway login role: (its name, db_url as it). Dropped with what it owns."""
    user = f"role_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {user} LOGIN {options}")
    try:
        yield user, db_url.replace("postgres@", f"{user}@")
    finally:
        await db.execute(f"DROP OWNED BY {user}")
        await db.execute(f"DROP ROLE {user}")
