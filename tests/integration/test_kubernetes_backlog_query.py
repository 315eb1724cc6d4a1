"""The KEDA ScaledObject's backlog query (deploy/kubernetes/base) on real PostgreSQL.

KEDA runs it every polling interval for as long as the fleet lives, so it must stay
cheap however large the table grows: an index-only walk of the partial pending index,
stopped by its LIMIT, never a scan of kept or scheduled rows.
"""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg

from tests.kubernetes.manifests import backlog_query, render

Conn = psycopg.AsyncConnection[tuple[Any, ...]]


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [node, *(found for child in node.get("Plans", []) for found in plan_nodes(child))]


async def explain(db: Conn, query: str) -> dict[str, Any]:
    cursor = await db.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + query)
    row = await cursor.fetchone()
    assert row is not None
    plan: dict[str, Any] = row[0][0]["Plan"]
    return plan


async def test_the_backlog_query_counts_due_rows_only(db: Conn) -> None:
    query = backlog_query(render())
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at, processed, failed_at) "
        "SELECT 't/' || i, 'p', now() + CASE i % 4 WHEN 0 THEN interval '1 day' "
        "ELSE interval '-1 minute' END, i % 4 = 1, CASE WHEN i % 4 = 2 THEN now() END "
        "FROM generate_series(1, 4000) i"
    )
    cursor = await db.execute(query)
    # Of each 4 rows: one scheduled ahead, one processed, one dead, one due.
    assert await cursor.fetchone() == (1000,)


async def test_the_backlog_query_walks_the_partial_index_and_stops_at_its_limit(
    db: Conn,
) -> None:
    query = backlog_query(render())
    limit = int(re.findall(r"LIMIT (\d+)", query)[0])
    # Kept rows, rows scheduled ahead and a due backlog larger than the limit: the query
    # must read none of the first two and stop at the limit in the third.
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at, processed) "
        "SELECT 't/' || i, 'p', now() - interval '2 days', true FROM generate_series(1, 50000) i"
    )
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at) "
        "SELECT 't/' || i, 'p', now() + interval '1 day' FROM generate_series(1, 50000) i"
    )
    await db.execute(
        "INSERT INTO jobs (topic, payload, fire_at) "
        "SELECT 't/' || i, 'p', now() - interval '1 hour' FROM generate_series(1, %s) i",
        (limit + 5000,),
    )
    await db.execute("VACUUM ANALYZE jobs")
    cursor = await db.execute(query)
    assert await cursor.fetchone() == (limit,)
    plan = await explain(db, query)
    scans = [node for node in plan_nodes(plan) if "Scan" in node["Node Type"]]
    assert [node["Node Type"] for node in scans] == ["Index Only Scan"], json.dumps(plan)
    assert scans[0]["Index Name"] == "jobs_pending_fire_at_idx", json.dumps(plan)
    assert scans[0]["Actual Rows"] == limit, json.dumps(plan)
