"""Administration: apply migrations, put dead rows back in the queue."""

from __future__ import annotations

from collections.abc import Sequence

from jobpub.db import queries
from jobpub.db.database import connect, database_errors


async def requeue(url: str, ids: Sequence[int] | None) -> list[int]:
    """Put dead rows (all, or those of `ids`) back in the queue; return their ids."""
    with database_errors("requeueing"):
        async with await connect(url) as conn:
            cursor = await conn.execute(queries.REQUEUE_DEAD, {"ids": list(ids) if ids else None})
            requeued = [job_id for (job_id,) in await cursor.fetchall()]
            await conn.execute(queries.NOTIFY_REQUEUED)
            await conn.commit()
    return requeued


async def migrate(url: str, scripts: Sequence[tuple[int, str, str]]) -> list[int]:
    """Apply the scripts not yet applied, in order; return the versions applied now.

    An advisory lock serialises replicas that start together; each script runs in
    its own transaction with its version record, so a failed one leaves nothing half done.
    """
    applied_now: list[int] = []
    with database_errors("migrating"):
        async with await connect(url, autocommit=True) as conn:
            await conn.execute(queries.MIGRATION_LOCK)
            try:
                await conn.execute(queries.CREATE_MIGRATIONS_TABLE)
                cursor = await conn.execute(queries.APPLIED_MIGRATIONS)
                done = {version for (version,) in await cursor.fetchall()}
                for version, name, sql in scripts:
                    if version in done:
                        continue
                    async with conn.transaction():
                        await conn.execute(sql)
                        await conn.execute(
                            queries.RECORD_MIGRATION, {"version": version, "name": name}
                        )
                    applied_now.append(version)
            finally:
                await conn.execute(queries.MIGRATION_UNLOCK)
    return applied_now
