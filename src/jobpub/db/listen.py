"""LISTEN for new and changed jobs, and count the backlog for the gauges."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import NamedTuple

import psycopg
import structlog

from jobpub.backoff import RECONNECT_MAX_S, Backoff
from jobpub.db import queries
from jobpub.db.database import Database, connect, database_errors
from jobpub.errors import DatabaseUnavailable
from jobpub.waiting import wait_for_event

log = structlog.get_logger("jobpub.db.listen")

# How often the notification loop looks at `stop` between notifications.
STOP_CHECK_INTERVAL = 1.0


class Backlog(NamedTuple):
    due: int
    scheduled: int
    dead: int


async def sample_backlog(database: Database) -> Backlog:
    """Counts of due, scheduled and dead rows (queries.BACKLOG)."""
    with database_errors("counting the backlog"):
        async with database.connection() as connection:
            cursor = await connection.execute(queries.BACKLOG)
            row = await cursor.fetchone()
    if row is None:
        raise DatabaseUnavailable("counting the backlog: no row returned")
    return Backlog(row[0], row[1], row[2])


class Listener:
    """Delivers NOTIFY hints on a connection of its own, reconnecting with backoff."""

    def __init__(self, database: Database) -> None:
        self._url = database.url
        self._enabled = not database.transaction_pooling
        self._last_error = ""  # the last failure logged

    async def listen(self, on_notify: Callable[[float | None], None], stop: asyncio.Event) -> None:
        """Deliver NOTIFY hints (earliest new fire_at, epoch seconds) until `stop`.

        A latency optimisation only: polling stays correct without it. Under transaction
        pooling (PgBouncer) it returns at once, having said so. After every (re)connect
        `on_notify(None)` is called, since notifications sent while disconnected are lost.
        """
        if not self._enabled:
            # A pooled server connection forgets the LISTEN as soon as its transaction ends.
            log.info(
                "listen_disabled",
                reason="JOBPUB_TRANSACTION_POOLING: notifications cannot pass; polling",
            )
            return
        backoff = Backoff(initial=0.5, maximum=RECONNECT_MAX_S)
        while not stop.is_set():
            try:
                await self._listen_once(on_notify, stop, backoff)
            except (psycopg.Error, OSError) as exc:
                delay = backoff.next()
                error = str(exc).strip()
                if error != self._last_error:  # once per distinct error, not per retry
                    log.warning("listen_failed", error=error, retry_in_s=round(delay, 2))
                    self._last_error = error
                await wait_for_event(stop, delay)

    async def _listen_once(
        self, on_notify: Callable[[float | None], None], stop: asyncio.Event, backoff: Backoff
    ) -> None:
        async with await connect(self._url, autocommit=True) as conn:
            await conn.execute(queries.LISTEN)
            backoff.reset()
            self._last_error = ""
            on_notify(None)
            while not stop.is_set():
                # Short generator runs so `stop` is seen; notifies() keeps none between runs
                # that matter: the hint after reconnect covers any gap.
                async for notify in conn.notifies(timeout=STOP_CHECK_INTERVAL):
                    on_notify(_parse_hint(notify.payload))


def _parse_hint(payload: str) -> float | None:
    try:
        return float(payload) if payload else None
    except ValueError:
        return None
