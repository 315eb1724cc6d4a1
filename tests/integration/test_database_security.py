"""PostgreSQL over TLS and with a password, against a server of the test's own."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from jobpub import migrations
from jobpub.db.admin import migrate
from testbed.broker import Broker
from testbed.daemon import make_settings, running
from testbed.postgres_server import PostgresServer, start_postgres
from testbed.subscriber import Subscriber
from testbed.tls import make_certificates
from testbed.waiting import eventually, in_file, logged


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    with start_postgres() as running_server:
        yield running_server


async def test_daemon_connects_with_verify_full_tls(
    server: PostgresServer, broker: Broker, subscriber: Subscriber
) -> None:
    url = server.url(sslmode="verify-full", sslrootcert=str(server.ca_file))
    await migrate(url, migrations.scripts())
    topic = subscriber.topic("over-tls")
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as db:
        await db.execute("INSERT INTO jobs (topic, payload) VALUES (%s, 'x')", (topic,))
        async with running(make_settings(url, broker.url)):
            await asyncio.to_thread(subscriber.wait_for, 1, 15)
            cursor = await db.execute(
                "SELECT count(*), bool_and(ssl) FROM pg_stat_ssl"
                " JOIN pg_stat_activity USING (pid) WHERE usename = 'publisher'"
            )
            connections, all_tls = await cursor.fetchone() or (0, False)
    assert connections >= 2, "the daemon's pool and this session"
    assert all_tls, "every connection of the daemon is encrypted"


async def test_a_server_signed_by_another_ca_is_refused(
    server: PostgresServer, tmp_path: Path
) -> None:
    other_ca = make_certificates(tmp_path / "other").ca
    url = server.url(sslmode="verify-full", sslrootcert=str(other_ca))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        await psycopg.AsyncConnection.connect(url)


async def test_wrong_database_password_is_not_ready_and_does_not_crash(
    server: PostgresServer, broker: Broker, info_logs: io.StringIO
) -> None:
    url = server.url(password="wrong-db-pass", sslmode="require")  # noqa: S106 (wrong on purpose)
    async with running(make_settings(url, broker.url)) as metrics:
        await eventually(
            logged(info_logs, "password authentication failed"),
            15,
            "the refusal logged",
        )
        refused = "password authentication failed"
        await eventually(in_file(server.log, refused, 4), 15, "several attempts refused")
        assert "jobpub_database_up 0.0" in metrics.render().decode()
    text = info_logs.getvalue()
    refusals = [json.loads(line)["event"] for line in text.splitlines()
                if "password authentication failed" in line]  # fmt: skip
    # Said once by the claim loop (and once by the LISTEN connection), not per retry.
    assert sorted(refusals) == ["database_unavailable", "listen_failed"]
    assert "wrong-db-pass" not in text
