"""`jobpub add|cancel|reschedule|stats` on real PostgreSQL, through main() as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from jobpub.cli import EXIT_BAD_SETTINGS, EXIT_FAILED, EXIT_OK, main
from testbed.daemon import env_for


@pytest.fixture
def cli_env(db_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("JOBPUB_DATABASE_URL", db_url)
    monkeypatch.setenv("JOBPUB_LOG_FORMAT", "json")
    return db_url


def one(db_url: str, sql: str, params: Any = None) -> tuple[Any, ...] | None:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql, params).fetchone()


def added(capsys: pytest.CaptureFixture[str], argv: list[str]) -> int:
    """Run `jobpub add …`, expect success, return the id it printed."""
    capsys.readouterr()
    assert main(["add", *argv]) == EXIT_OK
    return int(capsys.readouterr().out.strip())


def test_add_prints_the_id_and_stores_every_option(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = added(
        capsys,
        [
            "devices/7/valve", '{"open": true}', "--at", "2031-05-04T05:02:01+02:00",
            "--qos", "2", "--retain", "--expires-at", "2031-05-04T04:00:00Z",
            "--dedupe-key", "valve-7", "--content-type", "application/json",
            "--user-property", "site=north", "--user-property", "formula=a=b",
            "--response-topic", "replies/7", "--correlation-data", "req-1",
        ],
    )  # fmt: skip
    assert one(
        cli_env,
        "SELECT topic, payload, fire_at, qos, retain, expires_at, dedupe_key, content_type,"
        " user_properties, response_topic, correlation_data FROM jobs WHERE id = %s",
        (job_id,),
    ) == (
        "devices/7/valve", '{"open": true}', datetime(2031, 5, 4, 3, 2, 1, tzinfo=UTC), 2,
        True, datetime(2031, 5, 4, 4, tzinfo=UTC), "valve-7", "application/json",
        {"site": "north", "formula": "a=b"}, "replies/7", b"req-1",
    )  # fmt: skip
    assert added(capsys, ["devices/7/valve", "retry", "--dedupe-key", "valve-7"]) == job_id
    assert one(cli_env, "SELECT count(*) FROM jobs") == (1,)


def test_add_delays_by_the_database_clock_and_takes_base64(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = added(capsys, ["a/b", "AP8Q", "--base64", "--in", "5m", "--expires-in", "1h"])
    assert one(
        cli_env,
        "SELECT payload, payload_bytes, fire_at - created_at, expires_at - created_at, qos,"
        " retain FROM jobs WHERE id = %s",
        (job_id,),
    ) == ("", b"\x00\xff\x10", timedelta(minutes=5), timedelta(hours=1), 1, False)
    now_id = added(capsys, ["a/now", "x"])
    assert one(cli_env, "SELECT fire_at = created_at FROM jobs WHERE id = %s", (now_id,)) == (True,)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["add", "a/b", "x", "--at", "2031-01-01T00:00:00"], "has no UTC offset"),
        (["add", "a/b", "x", "--at", "tomorrow"], "not an ISO 8601 time"),
        (["add", "a/b", "x", "--in", "5 minutes"], "not a duration"),
        (["add", "a/b", "x", "--at", "2031-01-01T00:00:00Z", "--in", "5m"], "not allowed with"),
        (["add", "a/b", "x", "--user-property", "novalue"], "not KEY=VALUE"),
        (["add", "a/b", "x", "--qos", "3"], "invalid choice"),
        (["reschedule", "1"], "one of the arguments --at --in is required"),
        (["cancel", "one"], "invalid int value"),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(
    cli_env: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err
    assert one(cli_env, "SELECT count(*) FROM jobs") == (0,)


def test_refused_values_fail_with_the_reason(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["add", "devices/+/valve", "x"]) == EXIT_FAILED
    assert "jobs_topic_no_wildcards" in capsys.readouterr().err
    assert main(["add", "a/b", "not base64!", "--base64"]) == EXIT_BAD_SETTINGS
    assert "jobpub: add:" in capsys.readouterr().err
    assert one(cli_env, "SELECT count(*) FROM jobs") == (0,)


def test_cancel_and_reschedule(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = added(capsys, ["a/b", "x", "--in", "1h"])
    assert main(["reschedule", str(job_id), "--at", "2032-02-02T02:02:02Z"]) == EXIT_OK
    assert one(cli_env, "SELECT fire_at FROM jobs WHERE id = %s", (job_id,)) == (
        datetime(2032, 2, 2, 2, 2, 2, tzinfo=UTC),
    )
    assert main(["reschedule", str(job_id), "--in", "90s"]) == EXIT_OK
    assert one(cli_env, "SELECT fire_at - now() BETWEEN interval '80 s' AND interval '90 s'"
               " FROM jobs WHERE id = %s", (job_id,)) == (True,)  # fmt: skip
    assert main(["cancel", str(job_id)]) == EXIT_OK
    assert one(cli_env, "SELECT count(*) FROM jobs") == (0,)
    capsys.readouterr()
    assert main(["cancel", str(job_id)]) == EXIT_FAILED
    assert capsys.readouterr().err == f"jobpub: no job has id {job_id}\n"
    assert main(["reschedule", str(job_id), "--in", "1m"]) == EXIT_FAILED
    assert capsys.readouterr().err == f"jobpub: no job has id {job_id}\n"


def test_a_settled_job_is_not_cancelled(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    job_id = added(capsys, ["a/b", "x"])
    with psycopg.connect(cli_env) as conn:
        conn.execute("UPDATE jobs SET processed = true, processed_at = now()")
    assert main(["cancel", str(job_id)]) == EXIT_FAILED
    assert capsys.readouterr().err == (
        f"jobpub: job {job_id} is published, no longer pending: not cancelled\n"
    )
    assert main(["reschedule", str(job_id), "--in", "1m"]) == EXIT_FAILED
    assert "no longer pending: not rescheduled" in capsys.readouterr().err
    assert one(cli_env, "SELECT count(*) FROM jobs WHERE processed") == (1,)


def test_an_unreachable_database_fails_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(
        "JOBPUB_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none?connect_timeout=2"
    )
    assert main(["add", "a/b", "x"]) == EXIT_FAILED
    assert capsys.readouterr().err.startswith("jobpub: adding a job: ")
    assert main(["stats"]) == EXIT_FAILED
    assert capsys.readouterr().err.startswith("jobpub: reading stats: ")


STATS_SETUP = """
INSERT INTO jobs (topic, payload, fire_at) VALUES
    ('due/1', 'x', now() - interval '90 seconds'),
    ('due/2', 'x', now() - interval '10 seconds'),
    ('later/1', 'x', now() + interval '1 hour');
INSERT INTO jobs (topic, payload, failed_at) VALUES ('dead/1', 'x', now());
INSERT INTO jobs (topic, payload, processed, processed_at) VALUES
    ('sent/1', 'x', true, now() - interval '5 seconds'),
    ('sent/2', 'x', true, now() - interval '20 seconds'),
    ('sent/old', 'x', true, now() - interval '2 minutes');
INSERT INTO jobs (topic, payload, processed, processed_at, expired_at) VALUES
    ('late/1', 'x', true, now(), now());
INSERT INTO jobpub_replicas (id, host, version, partition, heartbeat_at) VALUES
    (gen_random_uuid(), 'a', '1', '0/1', now()),
    (gen_random_uuid(), 'b', '1', '0/1', now() - interval '5 seconds'),
    (gen_random_uuid(), 'c', '1', '0/1', now() - interval '1 hour');
INSERT INTO pauses (filter, reason) VALUES ('devices/+/valve', 'maintenance'), ('b/#', NULL);
INSERT INTO schedules (name, topic, payload, every, enabled)
VALUES ('beat', 'b/beat', '{}', interval '1 hour', true),
       ('off', 'b/off', '{}', interval '1 hour', false);
"""


def test_stats(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(cli_env) as conn:
        conn.execute(STATS_SETUP)
    capsys.readouterr()
    assert main(["stats", "--json"]) == EXIT_OK
    stats = json.loads(capsys.readouterr().out)
    assert 90 <= stats["oldest_due_age_s"] < 120
    assert stats["counts"]["pending"] == {"value": 3, "exact": True}
    assert stats["counts"]["due"] == {"value": 2, "exact": True}
    assert stats["counts"]["dead"] == {"value": 1, "exact": True}
    assert stats["counts"]["published"]["exact"] is False  # the planner's estimate
    assert stats["published_last_minute"] == {"value": 2, "exact": True}
    assert stats["expired_last_minute"] == {"value": 1, "exact": True}
    assert stats["live_replicas"] == 2  # the stale one (JOBPUB_REPLICA_STALE_AFTER) left out
    assert stats["pauses"] == ["b/#", "devices/+/valve"]
    assert (stats["schedules"], stats["schedules_enabled"]) == (2, 1)
    datetime.fromisoformat(stats["measured_at"])
    assert main(["stats"]) == EXIT_OK
    text = capsys.readouterr().out.splitlines()
    assert text[0] == "pending      3"
    assert text[1].startswith("due          2 (oldest 1m")
    assert "last minute  2 published, 1 expired" in text
    assert "replicas     2 live" in text
    assert "pauses       2: b/#, devices/+/valve" in text
    assert "schedules    2 (1 enabled)" in text


def test_the_installed_command_prints_the_id(db_url: str) -> None:
    """`jobpub add` as a shell script runs it: the id alone on stdout."""
    env = env_for(db_url, "mqtt://127.0.0.1:1883")
    done = subprocess.run(
        [sys.executable, "-m", "jobpub", "add", "a/b", "hello", "--in", "1m"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == EXIT_OK, done.stderr
    job_id = int(done.stdout)
    assert one(db_url, "SELECT payload FROM jobs WHERE id = %s", (job_id,)) == ("hello",)
