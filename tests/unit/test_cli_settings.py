"""`jobpub run` with a bad setting: one line on stderr naming it, never its value; exit 2."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobpub.cli import EXIT_BAD_SETTINGS, main

GOOD = {
    "JOBPUB_DATABASE_URL": "postgresql://app:hunter2@db.invalid/jobs",
    "JOBPUB_MQTT_URL": "mqtts://dev:hunter2@broker.invalid",
}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            {"JOBPUB_DATABASE_URL": "postgresql://app:hunter2@h1,h2:54x/jobs"},
            "JOBPUB_DATABASE_URL: has an invalid port",
        ),
        (
            {"JOBPUB_DATABASE_URL": "host=db password='hunter2"},
            "JOBPUB_DATABASE_URL: has a quoted value without its closing quote",
        ),
        (
            {"JOBPUB_DATABASE_URL": "postgresql://db/jobs?hunter2"},
            "JOBPUB_DATABASE_URL: has a query parameter that is not key=value",
        ),
        (
            {"JOBPUB_DATABASE_URL": "mysql://root:hunter2@db/x"},
            "JOBPUB_DATABASE_URL: must start with postgresql://",
        ),
        (
            {"JOBPUB_MQTT_URL": "mqtt://dev:hunter2@broker.invalid",
             "JOBPUB_MQTT_CA_FILE": "/etc/ssl/ca.pem"},
            "JOBPUB_MQTT_CA_FILE needs an mqtts:// JOBPUB_MQTT_URL",
        ),
        (
            {"JOBPUB_MQTT_URL": "mqtt://broker.invalid", "JOBPUB_MQTT_CERT_FILE": "c.pem",
             "JOBPUB_MQTT_KEY_FILE": "k.pem"},
            "JOBPUB_MQTT_CERT_FILE, JOBPUB_MQTT_KEY_FILE need an mqtts:// JOBPUB_MQTT_URL",
        ),
        (
            {"JOBPUB_MQTT_URL": "mqtt://:hunter2@broker.invalid", "JOBPUB_MQTT_PROTOCOL": "3.1.1"},
            "JOBPUB_MQTT_URL has a password without a user name",
        ),
        ({"JOBPUB_MAX_ATTEMPTS": "0"}, "JOBPUB_MAX_ATTEMPTS"),
        ({"JOBPUB_RETRY_BACKOFF_MAX": "1e9"}, "JOBPUB_RETRY_BACKOFF_MAX"),
    ],
)  # fmt: skip
def test_a_bad_setting_gives_one_line_and_exit_2(
    bad: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in [name for name in os.environ if name.startswith("JOBPUB_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env
    for name, value in {**GOOD, **bad}.items():
        monkeypatch.setenv(name, value)
    assert main(["run"]) == EXIT_BAD_SETTINGS
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith("jobpub: invalid settings: ")
    assert message in err
    assert "hunter2" not in err, "values (which may hold secrets) are not echoed"
