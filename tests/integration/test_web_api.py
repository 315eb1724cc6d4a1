"""`jobpub web`'s REST API on real PostgreSQL: every endpoint, auth, conflicts, validation."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from jobpub.db.stats import COUNT_CAP
from jobpub.web.app import create_app
from jobpub.web.config import WebConfig, bind_refusal
from tests.browser.chrome import web_process

TOKEN = "admin-token-0123456789"  # noqa: S105 - a test's own token
READONLY = "readonly-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
READER = {"Authorization": f"Bearer {READONLY}"}


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient]:
    config = WebConfig(
        database_url=db_url, token=TOKEN, readonly_token=READONLY, topic_prefixes=("t/",)
    )
    with TestClient(create_app(config)) as running:
        yield running


@pytest.fixture
def sql(db_url: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


def insert(sql: psycopg.Connection[tuple[Any, ...]], statement: str, *params: object) -> int:
    row = sql.execute(statement + " RETURNING id", params).fetchone()
    assert row is not None
    return int(row[0])


def pending(sql: psycopg.Connection[tuple[Any, ...]], topic: str = "t/a", in_s: int = 3600) -> int:
    return insert(
        sql,
        "INSERT INTO jobs (topic, payload, fire_at)"
        " VALUES (%s, 'p', now() + make_interval(secs => %s))",
        topic,
        in_s,
    )


def dead(sql: psycopg.Connection[tuple[Any, ...]], topic: str = "t/dead") -> int:
    return insert(
        sql,
        "INSERT INTO jobs (topic, payload, fire_at, attempts, last_error, failed_at)"
        " VALUES (%s, 'd', now() - interval '1 hour', 25, 'refused: not authorized', now())",
        topic,
    )


def published(sql: psycopg.Connection[tuple[Any, ...]]) -> int:
    return insert(
        sql,
        "INSERT INTO jobs (topic, payload, fire_at, processed, processed_at)"
        " VALUES ('t/done', 'x', now() - interval '2 minutes', true,"
        "         now() - interval '90 seconds')",
    )


def assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    return body


# --- authentication ----------------------------------------------------------------------


def test_no_token_is_401_and_a_wrong_token_is_401(client: TestClient) -> None:
    response = client.get("/api/stats")
    body = assert_problem(response, 401)
    assert "Bearer" in body["detail"]
    assert response.headers["www-authenticate"] == "Bearer"
    assert_problem(client.get("/api/jobs", headers={"Authorization": "Bearer nope"}), 401)


def test_the_readonly_token_may_get_but_not_change(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    job = pending(sql)
    assert client.get("/api/jobs", headers=READER).status_code == 200
    assert client.get(f"/api/jobs/{job}", headers=READER).status_code == 200
    assert_problem(client.delete(f"/api/jobs/{job}", headers=READER), 403)
    assert_problem(client.post("/api/jobs", headers=READER, json={"topic": "t/x"}), 403)
    assert_problem(client.patch(f"/api/jobs/{job}", headers=READER, json={"delay": 1}), 403)
    assert sql.execute("SELECT count(*) FROM jobs WHERE id = %s", (job,)).fetchone() == (1,)


def test_openapi_and_docs_are_served_without_a_cdn(client: TestClient) -> None:
    schema = client.get("/api/openapi.json").json()
    assert {
        "/api/jobs", "/api/jobs/{job_id}", "/api/stats", "/api/schedules", "/api/pauses",
        "/api/pauses/{topic_filter}", "/api/replicas",
    } <= set(schema["paths"])  # fmt: skip
    docs = client.get("/api/docs").text
    assert "/api/docs/assets/swagger-ui-bundle.js" in docs
    assert "cdn" not in docs.lower()
    assert client.get("/api/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/api/docs/assets/swagger-ui.css").status_code == 200


def test_a_server_without_token_refuses_to_bind_beyond_loopback(db_url: str) -> None:
    assert bind_refusal(WebConfig(db_url, host="127.0.0.1")) is None
    refusal = bind_refusal(WebConfig(db_url, host="0.0.0.0"))  # noqa: S104
    assert refusal is not None
    assert "JOBPUB_WEB_TOKEN" in refusal
    assert bind_refusal(WebConfig(db_url, host="0.0.0.0", token=TOKEN)) is None  # noqa: S104
    assert bind_refusal(WebConfig(db_url, readonly_token=READONLY)) is not None
    assert bind_refusal(WebConfig(db_url, token="change-me-web"))  # noqa: S106 is not None


def test_jobpub_web_refuses_a_public_bind_without_a_token(db_url: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBPUB_")}
    env.update(JOBPUB_DATABASE_URL=db_url, JOBPUB_WEB_HOST="0.0.0.0")  # noqa: S104
    refused = subprocess.run(
        [sys.executable, "-m", "jobpub", "web"], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1
    assert "without JOBPUB_WEB_TOKEN" in refused.stderr
    env.update(JOBPUB_WEB_TOKEN="short")  # noqa: S106 - refused for its length
    too_short = subprocess.run(
        [sys.executable, "-m", "jobpub", "web"], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert too_short.returncode == 2
    assert "JOBPUB_WEB_TOKEN" in too_short.stderr


def test_jobpub_web_without_a_token_serves_locally_and_says_so(db_url: str, tmp_path: Path) -> None:
    log = tmp_path / "web.log"
    with web_process(db_url, log) as url:
        with urllib.request.urlopen(f"{url}/api/stats", timeout=10) as response:  # noqa: S310
            assert response.status == 200
        assert "web_without_token" in log.read_text()
        # uvicorn decodes the path before routing, as the test client does: a filter
        # encoded whole reaches the pause it names.
        pause = urllib.request.Request(  # noqa: S310 - http:// of our own server
            f"{url}/api/pauses", data=b'{"filter": "a/+/#"}',
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(pause, timeout=10) as response:  # noqa: S310
            assert response.status == 201
        resume = urllib.request.Request(f"{url}/api/pauses/a%2F%2B%2F%23", method="DELETE")  # noqa: S310
        with urllib.request.urlopen(resume, timeout=10) as response:  # noqa: S310
            assert response.status == 204


def test_without_a_token_every_request_is_allowed(db_url: str) -> None:
    with TestClient(create_app(WebConfig(db_url))) as local:
        assert local.post("/api/jobs", json={"topic": "a/b"}).status_code == 201


# --- jobs ----------------------------------------------------------------------------------


def test_add_read_reschedule_cancel(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    fire_at = datetime.now(UTC) + timedelta(hours=2)
    created = client.post(
        "/api/jobs",
        headers=ADMIN,
        json={"topic": "t/valve/7", "payload": "open", "fire_at": fire_at.isoformat(),
              "qos": 2, "retain": True},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    job = created.json()
    assert created.headers["location"] == f"/api/jobs/{job['id']}"
    assert (job["topic"], job["payload"], job["qos"], job["retain"], job["state"]) == (
        "t/valve/7", "open", 2, True, "pending",
    )  # fmt: skip
    row = sql.execute("SELECT topic, payload, fire_at, qos, retain FROM jobs WHERE id = %s",
                      (job["id"],)).fetchone()  # fmt: skip
    assert row == ("t/valve/7", "open", fire_at, 2, True)

    assert client.get(f"/api/jobs/{job['id']}", headers=ADMIN).json() == job

    moved = client.patch(f"/api/jobs/{job['id']}", headers=ADMIN, json={"delay": 60})
    assert moved.status_code == 200, moved.text
    new_fire_at = sql.execute("SELECT fire_at - now() FROM jobs WHERE id = %s",
                              (job["id"],)).fetchone()  # fmt: skip
    assert new_fire_at is not None
    assert timedelta(seconds=55) < new_fire_at[0] <= timedelta(seconds=60)

    assert client.delete(f"/api/jobs/{job['id']}", headers=ADMIN).status_code == 204
    assert sql.execute("SELECT count(*) FROM jobs WHERE id = %s", (job["id"],)).fetchone() == (0,)
    assert_problem(client.get(f"/api/jobs/{job['id']}", headers=ADMIN), 404)
    assert_problem(client.delete(f"/api/jobs/{job['id']}", headers=ADMIN), 404)
    assert_problem(client.patch(f"/api/jobs/{job['id']}", headers=ADMIN, json={"delay": 1}), 404)


def test_a_delay_counts_from_the_database_clock(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    job = client.post("/api/jobs", headers=ADMIN, json={"topic": "t/x", "delay": 30}).json()
    row = sql.execute(
        "SELECT fire_at - created_at FROM jobs WHERE id = %s", (job["id"],)
    ).fetchone()
    assert row is not None
    assert abs(row[0] - timedelta(seconds=30)) < timedelta(seconds=1)


def test_settled_jobs_cannot_be_cancelled_or_rescheduled(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    for job, state in ((published(sql), "published"), (dead(sql), "dead")):
        body = assert_problem(client.delete(f"/api/jobs/{job}", headers=ADMIN), 409)
        assert body["state"] == state
        assert "no longer pending" in body["detail"]
        assert_problem(client.patch(f"/api/jobs/{job}", headers=ADMIN, json={"delay": 5}), 409)
    assert sql.execute("SELECT count(*) FROM jobs").fetchone() == (2,)


def test_a_job_being_published_is_a_conflict_not_a_wait(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]], db_url: str
) -> None:
    job = pending(sql, in_s=0)
    with psycopg.connect(db_url) as replica:  # holds the row as a claim does
        replica.execute("SELECT id FROM jobs WHERE id = %s FOR UPDATE", (job,))
        body = assert_problem(client.delete(f"/api/jobs/{job}", headers=ADMIN), 409)
        assert "locked by another transaction" in body["detail"]
        replica.rollback()
    assert client.delete(f"/api/jobs/{job}", headers=ADMIN).status_code == 204


def test_requeue_one_and_bulk(client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]) -> None:
    one, other, elsewhere = dead(sql), dead(sql, "t/dead/b"), dead(sql, "t/other")
    waiting = pending(sql)
    requeued = client.post(f"/api/jobs/{one}/requeue", headers=ADMIN)
    assert requeued.status_code == 200, requeued.text
    assert (requeued.json()["state"], requeued.json()["attempts"]) == ("pending", 0)
    assert_problem(client.post(f"/api/jobs/{one}/requeue", headers=ADMIN), 409)
    assert_problem(client.post(f"/api/jobs/{waiting}/requeue", headers=ADMIN), 409)
    assert_problem(client.post("/api/jobs/999999/requeue", headers=ADMIN), 404)

    bulk = client.post("/api/jobs/requeue", headers=ADMIN, json={"topic": "t/dead"})
    assert bulk.json() == {"requeued": 1, "ids": [other]}
    still_dead = sql.execute("SELECT id FROM jobs WHERE failed_at IS NOT NULL").fetchall()
    assert still_dead == [(elsewhere,)]
    everything = client.post("/api/jobs/requeue", headers=ADMIN, json={})
    assert everything.json()["requeued"] == 1


def test_list_pages_by_keyset_and_filters(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    ids = [pending(sql, topic=f"t/{'a' if i % 2 else 'b'}/{i}", in_s=60 + i) for i in range(7)]
    gone = dead(sql)
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"state": "pending", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/api/jobs", headers=READER, params=params).json()
        seen += [job["id"] for job in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids

    by_topic = client.get("/api/jobs", headers=READER, params={"topic": "t/a/"}).json()
    assert [job["id"] for job in by_topic["jobs"]] == ids[1::2]
    only_dead = client.get("/api/jobs", headers=READER, params={"state": "dead"}).json()
    assert [job["id"] for job in only_dead["jobs"]] == [gone]
    every = client.get("/api/jobs", headers=READER).json()
    assert [job["id"] for job in every["jobs"]] == [gone, *ids]
    later = (datetime.now(UTC) + timedelta(seconds=63)).isoformat()
    after = client.get("/api/jobs", headers=READER, params={"after": later}).json()
    assert [job["id"] for job in after["jobs"]] == ids[4:]


def test_invalid_input_is_400_with_actionable_messages(client: TestClient) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"topic": "t/#"}, "wildcards"),
        ({"topic": ""}, "empty"),
        ({"topic": "t/x", "qos": 3}, "qos"),
        ({"topic": "t/x", "delay": 5, "fire_at": "2030-01-01T00:00:00+00:00"}, "not both"),
        ({"topic": "t/x", "fire_at": "2030-01-01T00:00:00"}, "timezone"),
        ({"topic": "t/x", "delay": -1}, "delay"),
        ({"payload": "x"}, "topic: is required"),
        ({"topic": "t/x", "colour": "red"}, "colour: is not a field"),
        ({"topic": "other/x"}, "outside the allowed prefixes"),
    ]
    for body, expected in cases:
        problem = assert_problem(client.post("/api/jobs", headers=ADMIN, json=body), 400)
        assert expected in problem["detail"], (body, problem)
    assert_problem(client.get("/api/jobs", headers=ADMIN, params={"state": "sleeping"}), 400)
    assert_problem(client.get("/api/jobs", headers=ADMIN, params={"limit": 0}), 400)
    assert_problem(client.get("/api/jobs", headers=ADMIN, params={"cursor": "??"}), 400)
    assert_problem(client.get("/api/jobs/abc", headers=ADMIN), 400)
    assert_problem(client.patch("/api/jobs/1", headers=ADMIN, json={}), 400)


def test_a_job_with_expiry_dedupe_key_and_mqtt5_properties(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    fire_at = datetime.now(UTC) + timedelta(minutes=5)
    expires_at = fire_at + timedelta(hours=1)
    body = {
        "topic": "t/valve/7", "payload": '{"open": true}', "fire_at": fire_at.isoformat(),
        "expires_at": expires_at.isoformat(), "dedupe_key": "v7-0600",
        "properties": {"content_type": "application/json",
                       "user_properties": {"site": "north"},
                       "response_topic": "t/replies/7", "correlation_data": "AAEC"},
    }  # fmt: skip
    created = client.post("/api/jobs", headers=ADMIN, json=body)
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["expires_at"], job["dedupe_key"], job["payload_size"]) == (
        expires_at.isoformat().replace("+00:00", "Z"), "v7-0600", 14,
    )  # fmt: skip
    assert job["properties"] == body["properties"]
    row = sql.execute(
        "SELECT expires_at, dedupe_key, content_type, user_properties, response_topic,"
        " correlation_data, payload_bytes FROM jobs WHERE id = %s", (job["id"],),
    ).fetchone()  # fmt: skip
    assert row == (expires_at, "v7-0600", "application/json", {"site": "north"},
                   "t/replies/7", b"\x00\x01\x02", None)  # fmt: skip
    assert client.get(f"/api/jobs/{job['id']}", headers=READER).json() == job

    # The key taken: that job, not a second one (as jobpub.client answers).
    again = client.post("/api/jobs", headers=ADMIN, json={**body, "payload": "other"})
    assert again.status_code == 200, again.text
    assert again.json() == job
    assert again.headers["location"] == f"/api/jobs/{job['id']}"
    assert sql.execute("SELECT count(*) FROM jobs").fetchone() == (1,)


def test_a_binary_payload_and_the_expired_state(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    blob = bytes(range(256))
    created = client.post(
        "/api/jobs", headers=ADMIN,
        json={"topic": "t/fw", "payload_base64": base64.b64encode(blob).decode(), "delay": 60},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    job = created.json()
    assert (job["payload"], job["payload_size"]) == ("", 256)
    assert base64.b64decode(job["payload_base64"]) == blob
    row = sql.execute("SELECT payload, payload_bytes FROM jobs WHERE id = %s", (job["id"],))
    assert row.fetchone() == ("", blob)
    listed = client.get("/api/jobs", headers=READER, params={"state": "pending"}).json()
    assert base64.b64decode(listed["jobs"][0]["payload_base64"]) == blob[:150]
    assert listed["jobs"][0]["payload_size"] == 256

    expired = insert(
        sql,
        "INSERT INTO jobs (topic, payload, fire_at, expires_at, processed, processed_at,"
        " expired_at) VALUES ('t/late', 'x', now() - interval '2 hours',"
        " now() - interval '1 hour', true, now(), now())",
    )
    done = published(sql)
    assert client.get(f"/api/jobs/{expired}", headers=READER).json()["state"] == "expired"
    by_state = {
        state: [j["id"] for j in client.get(
            "/api/jobs", headers=READER, params={"state": state}).json()["jobs"]]
        for state in ("expired", "published")
    }  # fmt: skip
    assert by_state == {"expired": [expired], "published": [done]}


def test_a_settled_row_with_unchecked_properties_is_still_shown(
    db_url: str, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    """Checks exempt settled rows (sql/0010): an adopted dead row may hold any JSON."""
    odd = insert(
        sql,
        "INSERT INTO jobs (topic, payload, failed_at, last_error, user_properties)"
        " VALUES ('t/odd', 'x', now(), 'old', '[1, {\"n\": 2}]')",
    )
    with TestClient(create_app(WebConfig(db_url))) as local:
        job = local.get(f"/api/jobs/{odd}")
        assert job.status_code == 200, job.text
        assert job.json()["properties"]["user_properties"] == [1, {"n": 2}]
        assert local.get("/api/jobs", params={"state": "dead"}).status_code == 200
        page = local.get(f"/jobs/{odd}")
        assert page.status_code == 200
        assert '<td class="mono">[1, {"n": 2}]</td>' in page.text


def test_new_job_fields_are_validated(client: TestClient) -> None:
    soon = (datetime.now(UTC) + timedelta(minutes=1)).isoformat()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"topic": "t/x", "payload": "a", "payload_base64": "YQ=="}, "not both"),
        ({"topic": "t/x", "payload_base64": "not base64!"}, "payload_base64"),
        ({"topic": "t/x", "delay": 120, "expires_at": soon}, "expire before it is due"),
        ({"topic": "t/x", "expires_at": "2030-01-01T00:00:00"}, "timezone"),
        ({"topic": "t/x", "dedupe_key": ""}, "dedupe_key"),
        ({"topic": "t/x", "properties": {"user_properties": {"n": 1}}}, "user_properties.n"),
        ({"topic": "t/x", "properties": {"response_topic": "t/+"}}, "wildcards"),
        ({"topic": "t/x", "properties": {"qos": 1}}, "properties.qos: is not a field"),
    ]
    for body, expected in cases:
        problem = assert_problem(client.post("/api/jobs", headers=ADMIN, json=body), 400)
        assert expected in problem["detail"], (body, problem)


# --- pauses ------------------------------------------------------------------------------


def test_pause_list_and_resume_filters_with_wildcards(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    filters = ["devices/+/valve/#", "#", "/leading", "a//b", "t/lamp", "x/+"]
    for topic_filter in filters:
        paused = client.post("/api/pauses", headers=ADMIN,
                             json={"filter": topic_filter, "reason": "maintenance"})  # fmt: skip
        assert paused.status_code == 201, paused.text
        assert paused.json()["filter"] == topic_filter
        found = client.get(paused.headers["location"], headers=READER).json()
        assert found["paused_at"] == paused.json()["paused_at"]
    listed = client.get("/api/pauses", headers=READER).json()
    assert sorted(p["filter"] for p in listed) == sorted(filters)
    assert {p["reason"] for p in listed} == {"maintenance"}
    assert client.get("/api/stats", headers=READER).json()["pauses"] == len(filters)

    # Pausing again is no error: 200, the pause keeps its start, a reason replaces the old.
    again = client.post("/api/pauses", headers=ADMIN,
                        json={"filter": "t/lamp", "reason": "still broken"})  # fmt: skip
    assert again.status_code == 200, again.text
    assert again.json()["reason"] == "still broken"
    first = next(p for p in listed if p["filter"] == "t/lamp")
    assert again.json()["paused_at"] == first["paused_at"]

    # In a path: `#` as %23; `/` and `+` as they are or encoded.
    for path in ("devices/+/valve/%23", "%23", "/leading", "a//b", "t%2Flamp", "x/%2B"):
        resumed = client.delete(f"/api/pauses/{path}", headers=ADMIN)
        assert resumed.status_code == 204, (path, resumed.text)
    assert sql.execute("SELECT count(*) FROM pauses").fetchone() == (0,)
    missing = assert_problem(client.delete("/api/pauses/t/lamp", headers=ADMIN), 404)
    assert "'t/lamp' is not paused" in missing["detail"]
    assert_problem(client.get("/api/pauses/t/lamp", headers=ADMIN), 404)


def test_pauses_need_a_token_and_the_readonly_one_may_only_look(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    sql.execute("INSERT INTO pauses (filter) VALUES ('t/held')")
    assert_problem(client.get("/api/pauses"), 401)
    assert_problem(client.post("/api/pauses", json={"filter": "t/x"}), 401)
    assert_problem(client.get("/api/replicas"), 401)
    assert client.get("/api/pauses", headers=READER).status_code == 200
    assert client.get("/api/replicas", headers=READER).status_code == 200
    assert_problem(client.post("/api/pauses", headers=READER, json={"filter": "t/x"}), 403)
    assert_problem(client.delete("/api/pauses/t/held", headers=READER), 403)
    assert sql.execute("SELECT filter FROM pauses").fetchall() == [("t/held",)]


def test_an_invalid_filter_is_400_with_the_rule(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"filter": "a/#/b"}, "not an MQTT topic filter"),
        ({"filter": "a+/b"}, "'+' fills a whole level"),
        ({"filter": ""}, "filter: a filter may not be empty"),
        ({"filter": "a/\x00"}, "control characters"),
        ({"reason": "x"}, "filter: is required"),
        ({"filter": "a", "until": "soon"}, "until: is not a field"),
        ({"filter": "a", "reason": "x" * 1001}, "reason"),
    ]
    for body, expected in cases:
        problem = assert_problem(client.post("/api/pauses", headers=ADMIN, json=body), 400)
        assert expected in problem["detail"], (body, problem)
        assert problem["errors"][0]["field"] in ("filter", "until", "reason")
    assert sql.execute("SELECT count(*) FROM pauses").fetchone() == (0,)


def _log_in(client: TestClient, token: str) -> str:
    """Log the test client in to the dashboard; the session's CSRF token."""
    client.cookies.clear()
    assert client.post("/login", data={"token": token}, follow_redirects=False).status_code == 303
    page = client.get("/pauses")
    assert page.status_code == 200
    found = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def test_the_dashboard_pauses_page_needs_the_admin_token_and_csrf(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    csrf = _log_in(client, READONLY)
    assert 'id="pause-form"' not in client.get("/pauses").text
    refused = client.post("/pauses", data={"csrf": csrf, "filter": "t/#"})
    assert_problem(refused, 403)

    csrf = _log_in(client, TOKEN)
    assert 'id="pause-form"' in client.get("/pauses").text
    assert_problem(client.post("/pauses", data={"csrf": "stale", "filter": "t/#"}), 403)
    assert sql.execute("SELECT count(*) FROM pauses").fetchone() == (0,)

    paused = client.post("/pauses", data={"csrf": csrf, "filter": " t/# ", "reason": "why"},
                         follow_redirects=False)  # fmt: skip
    assert paused.status_code == 303
    assert sql.execute("SELECT filter, reason FROM pauses").fetchall() == [("t/#", "why")]
    resumed = client.post("/pauses/resume", data={"csrf": csrf, "filter": "t/#"})
    assert "t/# resumed" in resumed.text
    assert sql.execute("SELECT count(*) FROM pauses").fetchone() == (0,)
    again = client.post("/pauses/resume", data={"csrf": csrf, "filter": "t/#"})
    assert "is not paused" in again.text


# --- replicas ----------------------------------------------------------------------------


def test_replicas_with_their_heartbeat_age(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    sql.execute(
        "INSERT INTO jobpub_replicas (id, host, version, partition, started_at, heartbeat_at)"
        " VALUES ('00000000-0000-0000-0000-000000000001', 'pub-a', '1.2.0', '0/1',"
        "         now() - interval '1 hour', now() - interval '2 seconds'),"
        "        ('00000000-0000-0000-0000-000000000002', 'pub-b', '1.2.0', '0/1',"
        "         now() - interval '2 hours', now() - interval '90 seconds')"
    )
    replicas = client.get("/api/replicas", headers=READER).json()
    assert [(r["host"], r["live"], r["partition"], r["version"]) for r in replicas] == [
        ("pub-a", True, "0/1", "1.2.0"), ("pub-b", False, "0/1", "1.2.0"),
    ]  # fmt: skip
    assert replicas[0]["id"] == "00000000-0000-0000-0000-000000000001"
    assert 2 <= replicas[0]["heartbeat_age_s"] < 30
    assert 90 <= replicas[1]["heartbeat_age_s"] < 120
    assert client.get("/api/stats", headers=READER).json()["replicas_live"] == 1


# --- stats -------------------------------------------------------------------------------


def test_stats_agree_with_sql(client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]) -> None:
    for _ in range(3):
        pending(sql)
    due = pending(sql, in_s=-120)
    dead(sql)
    published(sql)
    sql.execute("ANALYZE jobs")
    stats = client.get("/api/stats", headers=READER, params={"history": "true"}).json()
    assert stats["counts"]["pending"] == {"value": 4, "exact": True, "kind": "exact"}
    assert stats["counts"]["due"] == {"value": 1, "exact": True, "kind": "exact"}
    assert stats["counts"]["dead"] == {"value": 1, "exact": True, "kind": "exact"}
    assert stats["counts"]["published"] == {"value": 1, "exact": False, "kind": "estimate"}
    assert stats["counts"]["expired"] == {"value": 0, "exact": False, "kind": "estimate"}
    assert 119 < stats["oldest_due_age_s"] < 180
    assert len(stats["last_hour"]) == 60
    assert sum(m["published"] for m in stats["last_hour"]) == 1
    assert sum(m["dead"] for m in stats["last_hour"]) == 1
    assert stats["last_hour"][-1]["due_backlog"] == 1
    assert due


def test_a_job_waiting_out_a_retrys_backoff_is_pending_not_due(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    pending(sql, in_s=-60)
    sql.execute(
        "INSERT INTO jobs (topic, payload, fire_at, attempts, next_attempt_at)"
        " VALUES ('t/retrying', 'x', now() - interval '1 hour', 1, now() + interval '1 minute')"
    )
    stats = client.get("/api/stats", headers=READER).json()
    assert stats["counts"]["pending"]["value"] == 2
    assert stats["counts"]["due"] == {"value": 1, "exact": True, "kind": "exact"}
    assert 59 < stats["oldest_due_age_s"] < 120  # not the hour-late row in backoff


def test_stats_past_the_count_cap_are_estimates_labelled_so(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    # More pending rows than a count reads (COUNT_CAP), half of them due: the pending
    # count is the planner's estimate, the due count stops at the cap, both say so.
    rows = 2 * COUNT_CAP + 500
    sql.execute(
        "INSERT INTO jobs (topic, payload, fire_at)"
        " SELECT 't/many', 'p', now() + make_interval(secs => g - %(half)s)"
        " FROM generate_series(1, %(rows)s) AS g",
        {"rows": rows, "half": rows // 2},
    )
    sql.execute("ANALYZE jobs")
    counts = client.get("/api/stats", headers=READER).json()["counts"]
    assert counts["pending"]["kind"] == "estimate"
    assert counts["pending"]["exact"] is False
    assert COUNT_CAP < counts["pending"]["value"] <= rows * 1.1
    assert counts["due"] == {"value": COUNT_CAP, "exact": False, "kind": "at_least"}
    assert counts["dead"] == {"value": 0, "exact": True, "kind": "exact"}


def test_the_publish_rate_is_over_the_last_complete_minutes(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    # 3 published 2.5-4 minutes ago count (inside the last 5 complete minutes whenever
    # the request comes); one 10 minutes ago does not.
    for ago in ("150 seconds", "170 seconds", "230 seconds", "10 minutes"):
        sql.execute(
            "INSERT INTO jobs (topic, payload, fire_at, processed, processed_at)"
            " VALUES ('t/done', 'x', now() - %(ago)s::interval, true,"
            "         now() - %(ago)s::interval)",
            {"ago": ago},
        )
    stats = client.get("/api/stats", headers=READER).json()
    assert stats["rate_window_s"] == 300
    assert stats["published_per_s"] == round(3 / 300, 3)
    assert stats["last_hour"] is None


# --- schedules ----------------------------------------------------------------------------


def test_schedules_create_list_update_delete(
    client: TestClient, sql: psycopg.Connection[tuple[Any, ...]]
) -> None:
    created = client.post(
        "/api/schedules",
        headers=ADMIN,
        json={"name": "ping", "topic": "t/ping", "payload": "hi", "every": "30s"},
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["every"] == "PT30S"
    assert body["enabled"] is True
    assert len(body["next_occurrences"]) == 5
    first, second = (datetime.fromisoformat(t) for t in body["next_occurrences"][:2])
    assert second - first == timedelta(seconds=30)
    assert sql.execute("SELECT every FROM schedules WHERE name = 'ping'").fetchone() == (
        timedelta(seconds=30),
    )
    assert_problem(
        client.post("/api/schedules", headers=ADMIN,
                    json={"name": "ping", "topic": "t/ping", "every": 60}), 409,
    )  # fmt: skip
    listed = client.get("/api/schedules", headers=READER).json()
    assert [s["name"] for s in listed] == ["ping"]

    changed = client.patch(
        "/api/schedules/ping",
        headers=ADMIN,
        json={"cron": "0 6 * * *", "timezone": "Europe/Berlin"},
    )
    assert changed.status_code == 200, changed.text
    assert (changed.json()["every"], changed.json()["cron"]) == (None, "0 6 * * *")
    disabled = client.patch("/api/schedules/ping", headers=ADMIN, json={"enabled": False})
    assert disabled.json()["enabled"] is False
    assert disabled.json()["next_occurrences"] == []

    assert client.delete("/api/schedules/ping", headers=ADMIN).status_code == 204
    assert_problem(client.delete("/api/schedules/ping", headers=ADMIN), 404)
    assert_problem(client.get("/api/schedules/ping", headers=ADMIN), 404)
    assert_problem(client.patch("/api/schedules/ping", headers=ADMIN, json={"qos": 0}), 404)


def test_schedule_validation(client: TestClient) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "a", "topic": "t/a"}, "give every"),
        ({"name": "a", "topic": "t/a", "every": "soon"}, "not a duration"),
        ({"name": "a", "topic": "t/a", "every": "0s"}, "at least 1 second"),
        ({"name": "a", "topic": "t/a", "cron": "61 * * * *"}, "invalid cron"),
        ({"name": "a", "topic": "t/a", "every": 5, "cron": "* * * * *"}, "not both"),
        ({"name": "a", "topic": "t/a", "cron": "* * * * *", "timezone": "Mars/Base"}, "time zone"),
    ]
    for body, expected in cases:
        problem = assert_problem(client.post("/api/schedules", headers=ADMIN, json=body), 400)
        assert expected in problem["detail"], (body, problem)
    assert_problem(client.post("/api/schedules", headers=READER, json=cases[0][0]), 403)


def test_importing_the_replica_loads_no_web_library() -> None:
    """`jobpub run` stays small: the web extra is loaded by `jobpub web` alone."""
    probe = (
        "import sys, jobpub.app, jobpub.cli; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'fastapi', 'starlette', 'uvicorn', 'jinja2', 'multipart', 'swagger_ui_bundle'} "
        "or m.startswith('jobpub.web')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
