"""Connection strings as libpq takes them: several hosts, passwords in the query, redacted."""

from __future__ import annotations

import asyncio
import io
import socket
from urllib.parse import urlsplit

import psycopg

from testbed.broker import Broker
from testbed.daemon import make_settings, running
from testbed.subscriber import Subscriber

SECRET = "db-Secret-42"  # noqa: S105 - trust authentication takes any password: a real run


async def test_a_multi_host_url_fails_over_and_its_query_password_is_not_logged(
    db_url: str, broker: Broker, subscriber: Subscriber, info_logs: io.StringIO
) -> None:
    parts = urlsplit(db_url)
    # A bound socket that does not listen: its port refuses connections, as a dead primary.
    with socket.socket() as dead_host:
        dead_host.bind(("127.0.0.1", 0))
        dead_port = dead_host.getsockname()[1]
        url = (
            f"postgresql://{parts.username}@127.0.0.1:{dead_port},{parts.hostname}:{parts.port}"
            f"{parts.path}?password={SECRET}&target_session_attrs=read-write"
        )
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute("INSERT INTO jobs (topic, payload) VALUES (%s, 'failover')",
                         (subscriber.topic("valve"),))  # fmt: skip
        async with running(make_settings(url, broker.url)):
            [message] = await asyncio.to_thread(subscriber.wait_for, 1, 20)
    assert message.payload == b"failover"
    text = info_logs.getvalue()
    assert f"127.0.0.1:{dead_port},{parts.hostname}:{parts.port}" in text, "the hosts are logged"
    assert "password=***&target_session_attrs=read-write" in text
    assert SECRET not in text
