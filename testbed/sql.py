"""One value from the database, for tests that check what the replicas wrote."""

from __future__ import annotations

from typing import Any

import psycopg


def scalar(url: str, sql: str, params: tuple[Any, ...] | None = None) -> Any:
    """The first column of the first row `sql` returns (a row it must return). Without
    `params`, `sql` is sent as it is (a `%` in it needs no doubling)."""
    with psycopg.connect(url) as conn:
        row = conn.execute(sql, params).fetchone()
        assert row is not None, f"no row from {sql!r}"
        return row[0]


async def scalar_async(url: str, sql: str, params: tuple[Any, ...] | None = None) -> Any:
    """`scalar`, for a test running in the event loop."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (await conn.execute(sql, params)).fetchone()
        assert row is not None, f"no row from {sql!r}"
        return row[0]
