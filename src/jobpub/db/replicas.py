"""The live replicas (`jobpub_replicas`): register, heartbeat, leave; count the fleet."""

from __future__ import annotations

from dataclasses import dataclass

from jobpub.db import queries
from jobpub.db.database import Database, database_errors


@dataclass(frozen=True, slots=True)
class ReplicaRecord:
    """This replica's row in jobpub_replicas."""

    id: str  # a UUID chosen at start
    host: str
    version: str
    partition: str  # "index/count" of the static partition, "0/1" without one
    stale_after: float  # seconds without a heartbeat before any replica removes a row


class ReplicaRegistry:
    """Keeps this replica's row fresh and reports how many replicas are live."""

    def __init__(self, database: Database, record: ReplicaRecord) -> None:
        self._database = database
        self._record = record

    async def beat(self) -> int:
        """Register or refresh this replica, remove stale ones; the live count, this one in."""
        record = self._record
        params = {
            "id": record.id,
            "host": record.host,
            "version": record.version,
            "partition": record.partition,
            "stale_after": record.stale_after,
        }
        with database_errors("refreshing the replica heartbeat"):
            async with self._database.connection() as connection:
                cursor = await connection.execute(queries.BEAT_REPLICA, params)
                row = await cursor.fetchone()
        return int(row[0]) if row else 1

    async def leave(self) -> None:
        """Remove this replica's row (a clean stop)."""
        with database_errors("removing the replica"):
            async with self._database.connection() as connection:
                await connection.execute(queries.REMOVE_REPLICA, {"id": self._record.id})
