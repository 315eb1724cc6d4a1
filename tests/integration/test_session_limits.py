"""Bounds on what a database session may hold, on real PostgreSQL: keepalives on every
connection, and the hold timeout that frees a frozen replica's claimed rows."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from jobpub.db import database
from jobpub.db.claim import ClaimConfig, Claimer
from jobpub.db.complete import Completer, RetryPolicy
from jobpub.db.database import (
    KEEPALIVE_IDLE,
    TCP_USER_TIMEOUT_MS,
    Connection,
    Database,
    DatabaseConfig,
    connect,
)
from jobpub.metrics import Metrics
from jobpub.models import PUBLISHED
from testbed.waiting import eventually

Conn = psycopg.AsyncConnection[tuple[Any, ...]]
CLAIM = ClaimConfig(limit=100, lookahead=0.02, consumer_count=1, consumer_index=0,
                    takeover_delay=30, max_payload_bytes=256 * 1024,
                    batch_max_bytes=4 * 1024 * 1024)  # fmt: skip


def socket_options(connection: Connection) -> tuple[int, int, int]:
    """SO_KEEPALIVE, TCP_KEEPIDLE and TCP_USER_TIMEOUT as the kernel holds them."""
    with socket.fromfd(connection.pgconn.socket, socket.AF_INET, socket.SOCK_STREAM) as sock:
        return (
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        )


async def show(connection: Connection, setting: str) -> str:
    cursor = await connection.execute("SELECT current_setting(%s)", (setting,))
    row = await cursor.fetchone()
    assert row is not None
    return str(row[0])


@contextlib.asynccontextmanager
async def opened(db_url: str, hold_timeout: float | None) -> AsyncIterator[Database]:
    database = Database(DatabaseConfig(db_url, pool_size=1, hold_timeout=hold_timeout))
    await database.open()
    try:
        yield database
    finally:
        await database.close()


async def locked_rows(db: Conn) -> int:
    cursor = await db.execute(
        "SELECT (SELECT count(*) FROM jobs)"
        " - (SELECT count(*) FROM (SELECT 1 FROM jobs FOR UPDATE SKIP LOCKED) AS free)"
    )
    row = await cursor.fetchone()
    assert row is not None
    return int(row[0])


async def test_pooled_sessions_carry_the_hold_and_keepalive_limits(db_url: str) -> None:
    async with opened(db_url, hold_timeout=7.5) as database, database.connection() as session:
        assert await show(session, "idle_in_transaction_session_timeout") == "7500ms"
        assert await show(session, "statement_timeout") == "7500ms"
        # The server's side of the socket: a silent replica is dropped in seconds.
        assert await show(session, "tcp_keepalives_idle") == str(KEEPALIVE_IDLE)
        assert await show(session, "tcp_user_timeout") == str(TCP_USER_TIMEOUT_MS)
        # Ours: a vanished server fails our statements instead of hanging them.
        assert socket_options(session) == (1, KEEPALIVE_IDLE, TCP_USER_TIMEOUT_MS)


async def test_own_connections_keep_alive_and_a_url_may_set_its_own(db_url: str) -> None:
    async with await connect(db_url, autocommit=True) as listener:
        assert socket_options(listener) == (1, KEEPALIVE_IDLE, TCP_USER_TIMEOUT_MS)
    async with await connect(f"{db_url}?keepalives_idle=42", autocommit=True) as tuned:
        assert socket_options(tuned)[1] == 42


async def test_own_connections_give_up_on_a_server_that_never_answers(monkeypatch: Any) -> None:
    # A listener that accepts and says nothing: without connect_timeout libpq waits forever.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        monkeypatch.setattr(database, "CONNECT_TIMEOUT_S", 2)  # libpq's smallest
        with pytest.raises(psycopg.OperationalError, match="timeout"):
            await asyncio.wait_for(connect(f"postgresql://postgres@127.0.0.1:{port}/x"), 30)


async def test_a_claim_held_past_the_hold_timeout_frees_its_rows_and_its_owner_goes_on(
    db_url: str, db: Conn
) -> None:
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at) "
        "SELECT 'frozen/' || i, 'x', now() - interval '1 s' FROM generate_series(1, 3) i"
    )
    retry = RetryPolicy(max_attempts=5, backoff=1, backoff_max=300)
    async with opened(db_url, hold_timeout=0.5) as frozen, opened(db_url, None) as other:
        frozen_claims = Claimer(frozen, CLAIM, Metrics())
        frozen_completer = Completer(frozen, retry)
        held = await frozen_claims.claim()
        claimed_at = time.monotonic()
        assert len(held.jobs) == 3
        assert await locked_rows(db) == 3
        # The owner runs no statement (as if stopped): the server ends its transaction.
        await eventually(lambda: _no_rows_locked(db), 10, "the frozen claim's rows freed")
        assert time.monotonic() - claimed_at >= 0.5 - 0.05
        taken = await Claimer(other, CLAIM, Metrics()).claim()
        assert sorted(j.id for j in taken.jobs) == sorted(j.id for j in held.jobs)
        # Thawed, the owner finds its transaction gone: its settle re-marks only rows
        # nobody holds (none: the other replica has them), and it does not raise.
        settled = await frozen_completer.settle(held, [PUBLISHED] * 3)
        assert (settled.commit_lost, settled.published) == (True, 0)
        # Its pool replaced the dead session: the next claim works.
        await Completer(other, retry).release(taken)
        again = await frozen_claims.claim()
        assert len(again.jobs) == 3
        await frozen_completer.release(again)


async def test_releasing_a_batch_whose_hold_ran_out_does_not_raise(db_url: str, db: Conn) -> None:
    await db.execute("INSERT INTO jobs (topic, payload, fire_at) VALUES ('t/1', 'x', now())")
    retry = RetryPolicy(max_attempts=5, backoff=1, backoff_max=300)
    async with opened(db_url, hold_timeout=0.3) as database:
        batch = await Claimer(database, CLAIM, Metrics()).claim()
        assert len(batch.jobs) == 1
        await eventually(lambda: _no_rows_locked(db), 10, "the claim's rows freed")
        await Completer(database, retry).release(batch)
    cursor = await db.execute("SELECT processed, attempts FROM jobs")
    assert await cursor.fetchall() == [(False, 0)]


async def _no_rows_locked(db: Conn) -> bool:
    return await locked_rows(db) == 0
