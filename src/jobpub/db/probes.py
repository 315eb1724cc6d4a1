"""The delivery probe in the database (sql/0015_delivery_probes.sql): scheduling probe
jobs, the election of the one replica that subscribes, and what it records."""

from __future__ import annotations

import contextlib
from datetime import datetime
from typing import Final, LiteralString

from jobpub.db.database import Connection, Database, connect, database_errors, limit_session
from jobpub.errors import DatabaseError

# The next slot's probe job, through the SECURITY DEFINER function (the daemon role may
# not INSERT into jobs): every replica calls it, the dedupe key keeps one row a slot.
SCHEDULE_PROBE: Final[LiteralString] = (
    "SELECT jobpub_schedule_probe(%(topic)s, %(interval)s::float8)"
)

# A session-level lock on the subscriber's own connection: held while that session
# lives, so a replica that dies (its connection drops) frees it for the next to take.
# The key is jobpub's own; migrations and pruning use 7201203841 and 7201203842.
TRY_LEAD: Final[LiteralString] = "SELECT pg_try_advisory_lock(7201203843)"

# The database clock just after the SUBACK: probes published from then on would have
# reached the subscription.
DATABASE_NOW: Final[LiteralString] = "SELECT now()"

# One arrival: the first one counts (a QoS 1 duplicate changes nothing). Received the
# database's clock now less the seconds it `waited` in the subscriber's queue (one whose
# recording failed is recorded on a later election, with its latency as it arrived).
RECORD_RECEIPT: Final[LiteralString] = """
UPDATE delivery_probes
SET received_at = clock_timestamp() - make_interval(secs => %(waited)s)
WHERE probe_key = %(key)s AND received_at IS NULL
RETURNING extract(epoch FROM received_at - fire_at)::float8
"""

# Probes whose job ended more than `timeout` seconds ago and that never arrived: published
# while this subscription was up (the broker acknowledged it: an MQTT 3.1.1 broker does
# even when its ACL drops the message) or dead (refused: an MQTT 5 broker says "not
# authorized", whoever listened). Published counts from `since`, the database clock after
# the SUBACK: a probe published while nobody listened (a failover, a restart) is not
# missing. Due at or after it too (fire_at), so its PUBLISH left after the SUBACK: one
# marked just after `since` may have crossed the SUBACK on its way. Marked once, so each
# is counted once, by whichever replica holds the election. A probe still pending (a
# backlog, a pause) is late, not missing. Probes over a day old are left to be deleted.
MARK_MISSING: Final[LiteralString] = """
UPDATE delivery_probes p SET missing_at = now()
FROM jobs j
WHERE p.received_at IS NULL AND p.missing_at IS NULL
  AND p.fire_at > now() - interval '1 day'
  AND j.id = p.job_id
  AND (j.state = 'dead'
       OR (j.state = 'published' AND p.fire_at >= %(since)s AND j.processed_at >= %(since)s))
  AND coalesce(j.processed_at, j.failed_at) < now() - make_interval(secs => %(timeout)s)
RETURNING p.probe_key
"""

# The table holds a day of probes (2,880 rows at the default 30 s): enough for the
# status's hour; the metrics keep the longer history.
PRUNE_PROBES: Final[LiteralString] = """
DELETE FROM delivery_probes WHERE fire_at < now() - interval '1 day'
"""


class ProbeScheduler:
    """Schedules probe jobs on the replica's pool: one short statement a round."""

    def __init__(self, database: Database) -> None:
        self._database = database

    async def schedule_probe(self, topic: str, interval: float) -> datetime:
        """The next slot's probe job (made by this replica or another); its fire_at."""
        with database_errors("scheduling a delivery probe"):
            async with self._database.connection() as connection:
                cursor = await connection.execute(
                    SCHEDULE_PROBE, {"topic": topic, "interval": interval}
                )
                row = await cursor.fetchone()
        if row is None:  # a SELECT of a function returns one row
            raise DatabaseError("scheduling a delivery probe: no slot returned")
        slot: datetime = row[0]
        return slot


class ProbeSeat:
    """The elected subscriber's connection: holds the lock while open, records probes.

    Not behind a transaction pooler: a session lock needs the session (the app refuses
    the probe with JOBPUB_TRANSACTION_POOLING). The session carries the pool's limits
    (`hold_timeout` for a statement, the server's keepalives): a holder cut off by the
    network loses its session, and the election, in about 25 s, not Linux's two hours.
    """

    def __init__(self, url: str, hold_timeout: float) -> None:
        self._url = url
        self._hold_timeout = hold_timeout
        self._connection: Connection | None = None

    async def try_lead(self) -> bool:
        """True if this replica now holds the election (or already did)."""
        with database_errors("electing the probe subscriber"):
            if self._connection is None or self._connection.closed:
                self._connection = await self._connect()
            cursor = await self._connection.execute(TRY_LEAD)
            row = await cursor.fetchone()
        return bool(row and row[0])

    async def database_now(self) -> datetime:
        """The database's clock now, on the elected session."""
        connection = self._elected("reading the database clock")
        with database_errors("reading the database clock"):
            cursor = await connection.execute(DATABASE_NOW)
            row = await cursor.fetchone()
        if row is None:
            raise DatabaseError("reading the database clock: no row returned")
        now: datetime = row[0]
        return now

    async def record_receipt(self, key: str, waited: float) -> float | None:
        """Record that probe `key` arrived `waited` seconds ago; its latency in seconds, or
        None if it is no probe of ours or arrived already."""
        connection = self._elected("recording a delivery probe")
        with database_errors("recording a delivery probe"):
            cursor = await connection.execute(RECORD_RECEIPT, {"key": key, "waited": waited})
            row = await cursor.fetchone()
        return None if row is None else float(row[0])

    async def mark_missing(self, timeout: float, since: datetime) -> int:
        """Mark the probes published from `since` (or refused) over `timeout` seconds ago
        and never received; how many were newly marked. Also deletes probes over a day old."""
        connection = self._elected("marking missing delivery probes")
        with database_errors("marking missing delivery probes"):
            cursor = await connection.execute(MARK_MISSING, {"timeout": timeout, "since": since})
            missing = len(await cursor.fetchall())
            await connection.execute(PRUNE_PROBES)
        return missing

    async def resign(self) -> None:
        """Close the connection: the lock goes with it, to whichever replica asks next."""
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):  # a broken connection: nothing to close
                await connection.close()

    async def _connect(self) -> Connection:
        connection = await connect(self._url, autocommit=True, connect_timeout=10)
        try:
            await limit_session(connection, self._hold_timeout)
        except BaseException:
            await connection.close()
            raise
        return connection

    def _elected(self, action: str) -> Connection:
        if self._connection is None:
            raise DatabaseError(f"{action}: this replica is not the elected subscriber")
        return self._connection
