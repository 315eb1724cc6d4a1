"""Administration: apply migrations, put dead rows back in the queue."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, LiteralString

import structlog
from psycopg import errors as pg_errors
from psycopg import sql

from jobpub.backoff import Backoff
from jobpub.db import queries
from jobpub.db.database import Connection, connect, database_errors
from jobpub.errors import DatabaseError
from jobpub.migrations import Migration

log = structlog.get_logger("jobpub.db.admin")


@dataclass(frozen=True, slots=True)
class MigrationPolicy:
    """How long a migration may wait, and how often it tries again (docs/operations.md)."""

    lock_timeout: float = 2.0  # the longest one attempt waits for a table lock
    attempts: int = 30  # attempts per migration before giving up (about 3 minutes)
    retry_delay: float = 1.0  # the first pause between attempts; doubles up to the next
    retry_delay_max: float = 5.0
    # A no-transaction statement (a concurrent index build) blocks no producer, but it
    # waits for older transactions and then reads the whole table: a generous bound.
    statement_timeout: float = 3600.0
    # The longest wait for another `jobpub migrate` that holds the migration lock.
    lock_wait: float = 3600.0


async def requeue(url: str, ids: Sequence[int] | None) -> list[int]:
    """Put dead rows (all, or those of `ids`) back in the queue; return their ids."""
    with database_errors("requeueing"):
        async with await _connect(url) as conn:
            cursor = await conn.execute(queries.REQUEUE_DEAD, {"ids": list(ids) if ids else None})
            requeued = [job_id for (job_id,) in await cursor.fetchall()]
            await conn.execute(queries.NOTIFY_REQUEUED)
            await conn.commit()
    return requeued


async def allow_probe_topic(url: str, topic: str) -> None:
    """As the owner: let replicas connecting as jobpub_daemon probe `topic` (sql/0015)."""
    with database_errors("allowing the delivery probe's topic"):
        async with await _connect(url) as conn:
            await conn.execute(queries.ALLOW_PROBE_TOPIC, {"topic": topic})
            await conn.commit()


async def migrate(
    url: str,
    scripts: Sequence[tuple[int, str, str]],
    policy: MigrationPolicy = MigrationPolicy(),  # frozen: one default shared safely
) -> list[int]:
    """Apply the scripts not yet applied, in order; return the versions applied now.

    An advisory lock serialises runs that start together, also through PgBouncer's
    transaction pooling. Each script runs in its own transaction with its version record,
    so a failed one leaves nothing half done, and waits at most `lock_timeout` for a
    table lock per attempt, so producers' INSERTs queue behind it no longer than that.
    A script marked `-- jobpub:no-transaction` runs statement by statement instead.
    """
    applied_now: list[int] = []
    with database_errors("migrating"):
        async with (
            _migration_lock(url, policy) as lock_holder,
            await _connect(url, autocommit=True) as conn,
        ):
            async with conn.transaction():
                await conn.execute(queries.CREATE_MIGRATIONS_TABLE)
            cursor = await conn.execute(queries.APPLIED_MIGRATIONS)
            done = {version for (version,) in await cursor.fetchall()}
            for migration in (Migration(*script) for script in scripts):
                if migration.version in done:
                    continue
                if migration.transactional:
                    await _apply_in_transaction(conn, migration, policy, lock_holder)
                else:
                    await _apply_statement_by_statement(conn, migration, policy)
                log.info("migration_applied", version=migration.version, name=migration.name)
                applied_now.append(migration.version)
    return applied_now


async def _connect(url: str, *, autocommit: bool = False) -> Connection:
    """An administration connection. It never prepares statements: it runs each few
    times, and a prepared statement is lost behind PgBouncer's transaction pooling."""
    conn = await connect(url, autocommit=autocommit)
    conn.prepare_threshold = None
    return conn


@contextlib.asynccontextmanager
async def _migration_lock(url: str, policy: MigrationPolicy) -> AsyncIterator[int]:
    """Hold the migration lock in an open transaction; yield that session's server pid."""
    async with await _connect(url) as conn:  # leaving it commits: the lock goes with it
        deadline = time.monotonic() + policy.lock_wait
        backoff, waiting = Backoff(initial=0.05, maximum=1.0), False
        while not await _scalar(conn, queries.TRY_MIGRATION_LOCK):
            await conn.rollback()  # wait with no transaction, so no snapshot either
            if time.monotonic() > deadline:
                raise DatabaseError(
                    f"migrating: another `jobpub migrate` has held the migration lock "
                    f"for over {policy.lock_wait:g} s; is it stuck?"
                )
            if not waiting:
                log.info("migration_lock_waiting", reason="another jobpub migrate is running")
                waiting = True
            await asyncio.sleep(backoff.next())
        await conn.execute(queries.KEEP_MIGRATION_LOCK_IDLE)
        yield int(await _scalar(conn, queries.BACKEND_PID))


async def _apply_in_transaction(
    conn: Connection, migration: Migration, policy: MigrationPolicy, lock_holder: int
) -> None:
    timeout = {"timeout": f"{round(policy.lock_timeout * 1000)}ms"}
    record = {"version": migration.version, "name": migration.name}
    backoff = Backoff(initial=policy.retry_delay, maximum=policy.retry_delay_max)
    for attempt in range(1, policy.attempts + 1):
        try:
            async with conn.transaction():
                await conn.execute(queries.LIMIT_LOCK_WAIT, timeout)
                await conn.execute(migration.sql)
                await conn.execute(queries.RECORD_MIGRATION, record)
        except (pg_errors.LockNotAvailable, pg_errors.DeadlockDetected) as exc:
            if attempt == policy.attempts:
                break
            delay = backoff.next()
            log.warning(
                "migration_lock_busy",
                version=migration.version,
                attempt=attempt,
                of=policy.attempts,
                retry_in_s=round(delay, 2),
                error=str(exc).strip(),
            )
            await asyncio.sleep(delay)
        else:
            return
    blocker = await _oldest_transaction(conn, lock_holder)
    raise DatabaseError(
        f"migration {migration.version} ({migration.name}) gave up: its table locks were "
        f"busy for {policy.attempts} attempts of {policy.lock_timeout:g} s each "
        f"(lock_timeout); {blocker}. End that transaction and run `jobpub migrate` again"
    )


async def _apply_statement_by_statement(
    conn: Connection, migration: Migration, policy: MigrationPolicy
) -> None:
    for index in migration.concurrent_indexes():
        if await _scalar(conn, queries.INDEX_IS_INVALID, {"name": index}):
            log.warning("invalid_index_rebuilt", index=index, reason="a failed earlier build")
            drop = sql.SQL(queries.DROP_INDEX_CONCURRENTLY).format(index=sql.Identifier(index))
            await conn.execute(drop)
    for statement in migration.statements():
        try:
            async with asyncio.timeout(policy.statement_timeout):
                await conn.execute(statement)  # cancelled on the server on timeout
        except TimeoutError:
            raise DatabaseError(
                f"migration {migration.version} ({migration.name}): a statement ran over "
                f"{policy.statement_timeout:g} s and was cancelled; run `jobpub migrate` "
                "again at a quieter time"
            ) from None
    async with conn.transaction():
        await conn.execute(
            queries.RECORD_MIGRATION, {"version": migration.version, "name": migration.name}
        )


async def _oldest_transaction(conn: Connection, lock_holder: int) -> str:
    cursor = await conn.execute(queries.OLDEST_TRANSACTION, {"lock_holder": lock_holder})
    row = await cursor.fetchone()
    if row is None:
        return "no transaction is open now"
    pid, state, age_s, query = row
    return f"the oldest open transaction is pid {pid} ({state}, {age_s} s, last query: {query!r})"


async def _scalar(
    conn: Connection, statement: LiteralString, params: dict[str, object] | None = None
) -> Any:
    cursor = await conn.execute(statement, params)
    row = await cursor.fetchone()
    return None if row is None else row[0]
