"""Retention: delete finished rows once they are old enough, in bounded batches.

Published rows go after `published` seconds, dead rows after `dead`; 0 keeps them. Every
replica runs a Pruner, and an advisory lock taken per batch (queries.PRUNE_*_BATCH) lets
one at a time delete: the others find it busy and try again at their next round. While
due rows wait (a backlog), pruning waits too: it can always be done later.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal, LiteralString

import structlog

from jobpub.db import queries
from jobpub.db.database import Connection, connect, database_errors
from jobpub.errors import DatabaseError, DatabaseUnavailable, SchemaMissing
from jobpub.metrics import Metrics
from jobpub.waiting import wait_for_event

log = structlog.get_logger("jobpub.db.retention")


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    published: float  # seconds a published row is kept (JOBPUB_RETENTION); 0: forever
    dead: float  # seconds a dead row is kept (JOBPUB_DEAD_RETENTION); 0: forever
    # Rows per DELETE: about 5 ms of the server's work (measured), so a batch holds its
    # locks only briefly and WAL comes in small pieces.
    batch_size: int = 5000
    # The least pause between batches. The pause is at least as long as the batch took,
    # so pruning keeps at most half of one server process busy while a backlog of old
    # rows goes, and claims keep the rest (bench retention).
    batch_pause: float = 0.05
    interval: float = 60.0  # seconds between rounds
    # Due rows overdue by more than this mean a backlog: pruning stops until it clears.
    backlog_grace: float = 1.0
    backlog_retry: float = 5.0  # seconds until a round stopped by a backlog is tried again
    transaction_pooling: bool = False  # behind PgBouncer: no prepared statements

    @property
    def enabled(self) -> bool:
        return self.published > 0 or self.dead > 0


@dataclass(frozen=True, slots=True)
class PruneRound:
    published: int  # rows deleted this round
    dead: int
    busy: bool  # another replica held the lock: this round stopped early
    deferred: bool = False  # due rows were waiting: this round stopped early


class Pruner:
    """Deletes old finished rows on a connection of its own, never the claims' pool."""

    def __init__(self, url: str, config: RetentionConfig, metrics: Metrics) -> None:
        self._url = url
        self._config = config
        self._metrics = metrics
        self._last_error = ""

    async def run(self, stop: asyncio.Event) -> None:
        """Prune a round, then again every `interval`, until `stop`; errors wait a round."""
        if not self._config.enabled:
            log.info("retention_off", reason="JOBPUB_RETENTION and JOBPUB_DEAD_RETENTION are 0")
            return
        while not stop.is_set():
            try:
                result = await self.prune(stop)
            except SchemaMissing as exc:  # replicas upgraded before `jobpub migrate`
                self._warn_once(str(exc))
            except DatabaseUnavailable as exc:  # the claim loop reports the database gone
                log.debug("prune_failed", error=str(exc))
            except DatabaseError as exc:  # a privilege missing, say
                self._warn_once(str(exc))
            else:
                self._last_error = ""
                if result.published or result.dead:
                    log.info("pruned", published=result.published, dead=result.dead,
                             busy=result.busy, deferred=result.deferred)  # fmt: skip
                if result.deferred:  # a backlog usually clears in seconds
                    await wait_for_event(
                        stop, min(self._config.backlog_retry, self._config.interval)
                    )
                    continue
            await wait_for_event(stop, self._config.interval)

    def _warn_once(self, error: str) -> None:
        if error != self._last_error:  # once per distinct error, not per round
            log.warning("prune_failed", error=error)
            self._last_error = error

    async def prune(self, stop: asyncio.Event | None = None) -> PruneRound:
        """One round: batches of published rows, then of dead ones, until a batch comes
        back short, another replica holds the lock, or `stop` is set."""
        stop = stop or asyncio.Event()
        with database_errors("pruning old rows"):
            async with await connect(self._url, autocommit=True) as connection:
                if self._config.transaction_pooling:
                    connection.prepare_threshold = None
                published, stopped = await self._prune_kind(
                    connection,
                    queries.PRUNE_PUBLISHED_BATCH,
                    self._config.published,
                    "published",
                    stop,
                )
                dead = 0
                if stopped is None:
                    dead, stopped = await self._prune_kind(
                        connection, queries.PRUNE_DEAD_BATCH, self._config.dead, "dead", stop
                    )
        return PruneRound(published, dead, busy=stopped == "busy", deferred=stopped == "behind")

    async def _prune_kind(
        self,
        connection: Connection,
        statement: LiteralString,
        retention: float,
        state: Literal["published", "dead"],
        stop: asyncio.Event,
    ) -> tuple[int, Literal["busy", "behind"] | None]:
        """Rows deleted by `statement` in batches, and why it stopped early, if it did:
        another replica held the lock, or due rows were waiting."""
        if retention <= 0:
            return 0, None
        params = {
            "retention": retention,
            "batch_size": self._config.batch_size,
            "grace": self._config.backlog_grace,
        }
        deleted = 0
        pruned = self._metrics.pruned.labels(state=state)
        while True:
            started = time.monotonic()
            cursor = await connection.execute(statement, params)
            row = await cursor.fetchone()
            if row is None or row[0]:
                return deleted, "behind"
            if row[1] is None:
                return deleted, "busy"
            deleted += row[1]
            pruned.inc(row[1])
            if row[1] < self._config.batch_size:
                return deleted, None
            pause = max(self._config.batch_pause, time.monotonic() - started)
            if await wait_for_event(stop, pause):
                return deleted, None
