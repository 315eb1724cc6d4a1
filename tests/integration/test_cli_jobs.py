"""`jobpub add|cancel|reschedule|stats` on real PostgreSQL, through main() as a user runs it."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from jobpub import cli
from jobpub.cli import EXIT_BAD_SETTINGS, EXIT_FAILED, EXIT_OK, main
from jobpub.db import stats as stats_module
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
    capsys.readouterr()
    assert main(["add", "devices/7/valve", "retry", "--dedupe-key", "valve-7"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert int(out) == job_id
    assert err == f"jobpub: add: dedupe key taken: existing job {job_id}\n"
    assert one(cli_env, "SELECT count(*) FROM jobs") == (1,)


def test_add_delays_by_the_database_clock_and_takes_base64(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = added(capsys, ["a/b", "AP8Q", "--base64", "--in", "5m", "--expires-in", "1h"])
    assert capsys.readouterr().err == "", "a new job: no note"
    assert one(
        cli_env,
        "SELECT payload, payload_bytes, fire_at - created_at BETWEEN interval '5 min'"
        " AND interval '5 min 1 s', expires_at - fire_at, qos, retain FROM jobs WHERE id = %s",
        (job_id,),
    ) == ("", b"\x00\xff\x10", True, timedelta(hours=1), 1, False)
    now_id = added(capsys, ["a/now", "x"])
    assert one(
        cli_env,
        "SELECT fire_at - created_at BETWEEN interval '0' AND interval '1 s' FROM jobs"
        " WHERE id = %s",
        (now_id,),
    ) == (True,)


def test_an_expiry_counts_from_the_firing_time(
    cli_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    job_id = added(capsys, ["a/b", "x", "--in", "2h", "--expires-in", "10m"])
    assert one(cli_env, "SELECT expires_at - fire_at, state FROM jobs WHERE id = %s",
               (job_id,)) == (timedelta(minutes=10), "pending")  # fmt: skip
    # Only the database knows when "in 2h" is: refused by the statement.
    assert main(["add", "a/b", "x", "--in", "2h", "--expires-at", "2020-01-01T00:00:00Z"]) == (
        EXIT_FAILED
    )
    assert "would expire before it is published" in capsys.readouterr().err
    assert one(cli_env, "SELECT count(*) FROM jobs") == (1,)


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
        (["add", "a/b", "x", "--in", "1e20"], "argument --in: too long"),
        (["add", "a/b", "x", "--expires-in", "inf"], "argument --expires-in: too long"),
        (["reschedule", "1", "--in", "99999999999d"], "argument --in: too long"),
        (["add", "a/b", "not base64!", "--base64"], "argument PAYLOAD: not base64"),
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
    assert main(["add", "a/b", "x", "--at", "2031-01-01T00:00:00Z",
                 "--expires-at", "2031-01-01T00:00:00Z"]) == EXIT_BAD_SETTINGS  # fmt: skip
    assert capsys.readouterr().err.startswith(
        "jobpub: add: the job would expire before it is published"
    )
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


def test_connecting_gives_up_after_the_connect_timeout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server that accepts the connection and never answers (a hung host, a full proxy)."""
    monkeypatch.setattr(cli, "CONNECT_TIMEOUT_S", 2)  # libpq's least; 10 s as shipped
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel completes the handshake; nobody ever reads
        port = silent.getsockname()[1]
        monkeypatch.setenv("JOBPUB_DATABASE_URL", f"postgresql://postgres@127.0.0.1:{port}/x")
        assert main(["add", "a/b", "x"]) == EXIT_FAILED
    assert capsys.readouterr().err == (
        "jobpub: adding a job: no answer from the database within 2 s (connect timeout)\n"
    )


def test_a_dedupe_key_held_by_an_open_transaction_is_waited_for_within_the_lock_timeout(
    cli_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "LOCK_TIMEOUT_S", 0.5)  # 5 s as shipped
    with psycopg.connect(cli_env) as producer:
        producer.execute("INSERT INTO jobs (topic, payload, dedupe_key) VALUES ('a/b', 'x', 'k')")
        assert main(["add", "a/b", "y", "--dedupe-key", "k"]) == EXIT_FAILED
        assert capsys.readouterr().err == (
            "jobpub: adding a job: gave up waiting for a lock another transaction holds (lock"
            " timeout): a transaction that added the same dedupe key has not ended\n"
        )
        producer.rollback()
    assert one(cli_env, "SELECT count(*) FROM jobs") == (0,)


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
    ('late/1', 'x', true, now(), now()),
    ('late/old', 'x', true, now() - interval '1 hour', now() - interval '1 hour');
-- Pending, overdue the longest, but waiting out a retry's backoff: not due.
INSERT INTO jobs (topic, payload, fire_at, attempts, next_attempt_at) VALUES
    ('retrying/1', 'x', now() - interval '1 hour', 1, now() + interval '1 minute');
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
    with psycopg.connect(cli_env, autocommit=True) as conn:
        conn.execute("ANALYZE jobs")  # the estimates come from the table's statistics
    capsys.readouterr()
    assert main(["stats", "--json"]) == EXIT_OK
    stats = json.loads(capsys.readouterr().out)
    assert 90 <= stats["oldest_due_age_s"] < 120
    assert stats["counts"]["pending"] == {"value": 4, "exact": True, "kind": "exact"}
    assert stats["counts"]["due"] == {"value": 2, "exact": True, "kind": "exact"}
    assert stats["counts"]["dead"] == {"value": 1, "exact": True, "kind": "exact"}
    # 10 rows in the statistics, less 4 pending, 1 dead and 2 expired.
    assert stats["counts"]["published"] == {"value": 3, "exact": False, "kind": "estimate"}
    assert stats["counts"]["expired"] == {"value": 2, "exact": False, "kind": "estimate"}
    assert stats["published_last_minute"] == {"value": 2, "exact": True, "kind": "exact"}
    assert stats["expired_last_minute"] == {"value": 1, "exact": True, "kind": "exact"}
    assert stats["live_replicas"] == 2  # the stale one (JOBPUB_REPLICA_STALE_AFTER) left out
    assert stats["pauses"] == ["b/#", "devices/+/valve"]
    assert (stats["schedules"], stats["schedules_enabled"]) == (2, 1)
    datetime.fromisoformat(stats["measured_at"])
    assert main(["stats"]) == EXIT_OK
    text = capsys.readouterr().out.splitlines()
    assert text[0] == "pending      4"
    assert text[1].startswith("due          2 (oldest 1m")
    assert "published    about 3 (the table's statistics)" in text
    assert "expired      about 2 (the table's statistics)" in text
    assert "last minute  2 published, 1 expired" in text
    assert "replicas     2 live" in text
    assert "pauses       2: b/#, devices/+/valve" in text
    assert "schedules    2 (1 enabled)" in text


def test_counts_past_the_cap_are_at_least(
    cli_env: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(stats_module, "COUNT_CAP", 2)  # 10,000 as shipped
    with psycopg.connect(cli_env) as conn:
        conn.execute(STATS_SETUP)
        conn.execute(
            "INSERT INTO jobs (topic, payload, failed_at) VALUES ('dead/2', 'x', now());"
            "INSERT INTO jobs (topic, payload, processed, processed_at) VALUES"
            " ('sent/3', 'x', true, now())"
        )
    capsys.readouterr()
    assert main(["stats", "--json"]) == EXIT_OK
    stats = json.loads(capsys.readouterr().out)
    for name in ("pending", "due", "dead"):
        assert stats["counts"][name] == {"value": 2, "exact": False, "kind": "at_least"}, name
    assert stats["published_last_minute"] == {"value": 2, "exact": False, "kind": "at_least"}
    assert main(["stats"]) == EXIT_OK
    text = capsys.readouterr().out.splitlines()
    assert text[0] == "pending      at least 2"
    assert "last minute  at least 2 published, 1 expired" in text


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
