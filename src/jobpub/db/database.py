"""The connection pool, built in one place, and psycopg's errors turned into jobpub's."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from jobpub.db import queries
from jobpub.errors import DatabaseError, DatabaseUnavailable, SchemaMissing

Connection = psycopg.AsyncConnection[Any]

# How long a claim waits for a pooled connection before it counts the database away.
POOL_TIMEOUT = 5.0
# A connection of our own (not the pool's), to say why the pool has none.
PROBE_CONNECT_TIMEOUT = 5

# TCP keepalives on every connection, so that a peer gone silent (a partition, a paused
# VM, a dead host) is noticed in about KEEPALIVE_IDLE + KEEPALIVE_INTERVAL x
# KEEPALIVE_COUNT = 25 s instead of Linux's two hours: by libpq on our side (a claim or
# LISTEN on a vanished server fails instead of hanging), and by the server on its side
# for pooled sessions (SESSION_LIMITS). A URL that sets its own keeps them.
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
# Sent data unacknowledged this long drops the connection too (a write into a partition
# retransmits for about 15 minutes otherwise). Milliseconds, as libpq and the server take it.
TCP_USER_TIMEOUT_MS = (KEEPALIVE_IDLE + KEEPALIVE_INTERVAL * KEEPALIVE_COUNT) * 1000
_KEEPALIVES: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": KEEPALIVE_IDLE,
    "keepalives_interval": KEEPALIVE_INTERVAL,
    "keepalives_count": KEEPALIVE_COUNT,
    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
}

# Errors that mean "the database is not there right now", as opposed to a bug. A session
# ended by idle_in_transaction_session_timeout (a replica frozen past its hold) is gone
# like any lost connection: its locks went with it.
UNAVAILABLE = (
    psycopg.OperationalError,
    PoolTimeout,
    pg_errors.AdminShutdown,
    pg_errors.IdleInTransactionSessionTimeout,
)
_SCHEMA = (pg_errors.UndefinedTable, pg_errors.UndefinedColumn, pg_errors.UndefinedFunction)


RECONNECT_GIVE_UP = 5.0  # seconds of the pool's backoff before a claim retries afresh


@dataclass(frozen=True, slots=True)
class DatabaseConfig:
    url: str  # libpq URL; holds the password: never logged
    pool_size: int  # one connection per batch in flight (the relay's concurrency)
    # Behind PgBouncer's transaction pooling: no prepared statements, no LISTEN.
    transaction_pooling: bool = False
    # Seconds a pooled session may sit in an open transaction (a claim's locks held while
    # its batch publishes) or run one statement; None leaves the server's settings.
    hold_timeout: float | None = None


def keepalive_options(url: str) -> dict[str, int]:
    """libpq keepalive parameters for a connection to `url`, except those it sets itself."""
    given = conninfo_to_dict(url)
    return {name: value for name, value in _KEEPALIVES.items() if name not in given}


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


async def limit_session(connection: Connection, hold_timeout: float) -> None:
    """The server's bounds on a session (SESSION_LIMITS): `hold_timeout` seconds for a
    statement or an idle transaction, and keepalives on its side of the socket, so the
    session of a peer gone silent ends (and its locks with it) in about 25 s."""
    await connection.execute(
        queries.SESSION_LIMITS,
        {
            "hold_timeout_ms": str(round(hold_timeout * 1000)),
            "keepalives_idle": str(KEEPALIVE_IDLE),
            "keepalives_interval": str(KEEPALIVE_INTERVAL),
            "keepalives_count": str(KEEPALIVE_COUNT),
            "tcp_user_timeout_ms": str(TCP_USER_TIMEOUT_MS),
        },
    )


# libpq waits for a connection without limit by default: a shell command (`jobpub
# schedule`, `jobpub pause`) or a LISTEN connection would hang on an unanswered SYN.
CONNECT_TIMEOUT_S: Final = 10


async def connect(
    url: str, *, autocommit: bool = False, connect_timeout: int | None = None
) -> Connection:
    """A connection of its own, outside any pool (administration, LISTEN, recovery).
    Connecting waits `connect_timeout` seconds, or the URL's own, or CONNECT_TIMEOUT_S."""
    options: dict[str, int] = keepalive_options(url)
    if connect_timeout is not None:
        options["connect_timeout"] = connect_timeout
    elif conninfo_to_dict(url).get("connect_timeout") is None:
        options["connect_timeout"] = CONNECT_TIMEOUT_S
    return await psycopg.AsyncConnection.connect(
        make_conninfo(url, **options), autocommit=autocommit
    )


@contextlib.asynccontextmanager
async def command_transaction(
    url: str, action: str, *, connect_timeout: int, lock_timeout: float
) -> AsyncIterator[Connection]:
    """One transaction on a connection of its own, for a command run from a shell (`jobpub
    add`): committed when the block ends without an error, every wait bounded. Connecting
    waits at most `connect_timeout` seconds (a URL's own connect_timeout wins), a
    statement at most `lock_timeout` seconds for a lock (set for this transaction only,
    so safe behind PgBouncer); jobpub's errors out, each timeout saying which it was."""
    given = conninfo_to_dict(url).get("connect_timeout")
    timeout = int(given) if given is not None else connect_timeout
    with database_errors(action):
        try:
            connection = await connect(url, connect_timeout=timeout)
        except pg_errors.ConnectionTimeout as exc:
            raise DatabaseUnavailable(
                f"{action}: no answer from the database within {timeout} s (connect timeout)"
            ) from exc
        async with connection:  # psycopg commits on a clean exit, rolls back otherwise
            await connection.execute(
                queries.LIMIT_LOCK_WAIT, {"timeout": f"{round(lock_timeout * 1000)}ms"}
            )
            yield connection


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
        self._hold_timeout = config.hold_timeout
        self._pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            config.url,
            kwargs=keepalive_options(config.url),
            min_size=config.pool_size,
            max_size=config.pool_size + 1,  # + the backlog sampler
            open=False,
            name="jobpub",
            timeout=POOL_TIMEOUT,
            # psycopg_pool doubles its delay between reconnect attempts without a cap until
            # this timeout: unbounded, a database back after T seconds was noticed up to T
            # seconds later (bench chaos pg-failover-late). Given up after this, the next
            # claim asks the pool to grow, which tries at once.
            reconnect_timeout=RECONNECT_GIVE_UP,
            configure=self._configure_session,
        )
        self.transaction_pooling = config.transaction_pooling

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def _configure_session(self, connection: Connection) -> None:
        if self.transaction_pooling:
            # Session settings would stay on whichever server connection PgBouncer lent and
            # reach other clients; PgBouncer's idle_transaction_timeout bounds a hold there.
            await _never_prepare(connection)
        else:
            await self._limit_session(connection)

    async def _limit_session(self, connection: Connection) -> None:
        """Bound what a pooled session may hold: a frozen replica's locks, a stuck statement.

        Run once per new connection; committed, so the pool receives it idle.
        """
        if self._hold_timeout is None:
            return
        await limit_session(connection, self._hold_timeout)
        await connection.commit()

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
