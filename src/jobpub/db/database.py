"""The connection pool, built in one place, and psycopg's errors turned into jobpub's."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from jobpub.db import queries
from jobpub.errors import DatabaseError, DatabaseUnavailable, SchemaMissing

Connection = psycopg.AsyncConnection[Any]

# How long a claim waits for a pooled connection before it counts the database away.
POOL_TIMEOUT = 5.0
# A connection of our own (not the pool's), to say why the pool has none.
PROBE_CONNECT_TIMEOUT = 5

# Errors that mean "the database is not there right now", as opposed to a bug.
UNAVAILABLE = (psycopg.OperationalError, PoolTimeout, pg_errors.AdminShutdown)
_SCHEMA = (pg_errors.UndefinedTable, pg_errors.UndefinedColumn, pg_errors.UndefinedFunction)


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str  # libpq URL; holds the password: never logged
    pool_size: int  # one connection per batch in flight (the relay's concurrency)
    # Behind PgBouncer's transaction pooling: no prepared statements, no LISTEN.
    transaction_pooling: bool = False


def database_errors(action: str) -> _Translate:
    """`with database_errors("claiming jobs"):` raises jobpub's errors, never psycopg's."""
    return _Translate(action)


class _Translate:
    """Turn psycopg's errors into ours, so nothing outside jobpub.db sees psycopg."""

    def __init__(self, action: str) -> None:
        self._action = action

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is None:
            return
        if isinstance(exc, _SCHEMA):
            raise SchemaMissing(
                f"{self._action}: the jobs table is missing or old; run `jobpub migrate` ({exc})"
            ) from exc
        if isinstance(exc, UNAVAILABLE):
            raise DatabaseUnavailable(f"{self._action}: {str(exc).strip()}") from exc
        if isinstance(exc, psycopg.Error):
            raise DatabaseError(f"{self._action}: {str(exc).strip()}") from exc


async def connect(
    url: str, *, autocommit: bool = False, connect_timeout: int | None = None
) -> Connection:
    """A connection of its own, outside any pool (administration, LISTEN, recovery)."""
    if connect_timeout is None:
        return await psycopg.AsyncConnection.connect(url, autocommit=autocommit)
    return await psycopg.AsyncConnection.connect(
        url, autocommit=autocommit, connect_timeout=connect_timeout
    )


class Transaction:
    """An open transaction on a pooled connection: it holds a claim's row locks.

    It ends once, by `take` (whoever takes it commits or rolls back and gives the
    connection back); a second `take` is a bug.
    """

    def __init__(self, connection: Connection) -> None:
        self._connection: Connection | None = connection

    @property
    def is_open(self) -> bool:
        return self._connection is not None

    def take(self) -> Connection:
        connection, self._connection = self._connection, None
        if connection is None:
            raise RuntimeError("batch already settled or released")
        return connection


async def _never_prepare(connection: Connection) -> None:
    # psycopg prepares a statement after 5 runs; under transaction pooling the next run
    # may reach a server connection that never saw it (PgBouncer < 1.21 cannot track them).
    connection.prepare_threshold = None


class Database:
    """The one pool of a replica, sized to the batches in flight, plus the backlog sampler."""

    def __init__(self, config: DatabaseConfig) -> None:
        self.url = config.url
        self._pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            config.url,
            min_size=config.pool_size,
            max_size=config.pool_size + 1,  # + the backlog sampler
            open=False,
            name="jobpub",
            timeout=POOL_TIMEOUT,
            reconnect_timeout=float("inf"),  # keep trying for as long as we run
            configure=_never_prepare if config.transaction_pooling else None,
        )
        self.transaction_pooling = config.transaction_pooling

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    async def acquire(self) -> Connection:
        """A pooled connection; give it back with `give_back` or `discard`."""
        try:
            return await self._pool.getconn()
        except PoolTimeout as exc:
            raise PoolTimeout(f"{exc}; {await self._connect_error()}") from exc

    async def give_back(self, connection: Connection) -> None:
        await self._pool.putconn(connection)

    async def discard(self, connection: Connection) -> None:
        """Roll back whatever is open (if the connection still lives) and give it back."""
        with contextlib.suppress(*UNAVAILABLE):
            await connection.rollback()
        await self._pool.putconn(connection)

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A pooled connection for one short piece of work, committed on success."""
        async with self._pool.connection() as connection:
            yield connection

    async def check(self) -> None:
        """Return when the database answers a query; raise DatabaseUnavailable if not."""
        with database_errors("reaching the database"):
            connection = await self.acquire()
            try:
                await connection.execute(queries.PING)
            finally:
                await self.discard(connection)

    async def _connect_error(self) -> str:
        """Why the pool has no connection: its own attempts log nothing we can show."""
        try:
            probe = await connect(self.url, connect_timeout=PROBE_CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            return str(exc).strip()
        await probe.close()
        return "a new connection succeeds now"
