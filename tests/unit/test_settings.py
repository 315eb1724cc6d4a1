"""Settings: parsing, validation messages, secrets kept out of text."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from jobpub.settings import Settings, describe_errors, parse_mqtt_url, redact_url


def test_mqtt_url_forms() -> None:
    plain = parse_mqtt_url("mqtt://broker")
    assert (plain.host, plain.port, plain.tls, plain.username) == ("broker", 1883, False, None)
    tls = parse_mqtt_url("mqtts://u%40x:p%3Aw@broker.example")
    assert (tls.port, tls.tls, tls.username) == (8883, True, "u@x")
    assert tls.password is not None
    assert tls.password.get_secret_value() == "p:w"
    assert str(tls) == "mqtts://u@x@broker.example:8883"


@pytest.mark.parametrize("url", ["http://x", "mqtt://", "mqtt://host:99999", "broker:1883"])
def test_bad_mqtt_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match=r"must start|no host|invalid port"):
        parse_mqtt_url(url)


def test_redact_url_hides_only_the_password() -> None:
    assert redact_url("postgresql://app:s3cret@db:5432/jobs") == "postgresql://app:***@db:5432/jobs"
    assert redact_url("postgresql://db/jobs") == "postgresql://db/jobs"


def test_errors_name_the_variable_and_not_the_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOBPUB_DATABASE_URL", "mysql://root:hunter2@db/x")
    monkeypatch.setenv("JOBPUB_LOOKAHEAD", "-1")
    with pytest.raises(ValidationError) as caught:
        Settings()
    line = describe_errors(caught.value)
    assert "JOBPUB_DATABASE_URL: must start with postgresql://" in line
    assert "JOBPUB_LOOKAHEAD" in line
    assert "hunter2" not in line
    assert "\n" not in line


def test_a_dotenv_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("JOBPUB_DATABASE_URL", "JOBPUB_BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text(
        "JOBPUB_DATABASE_URL=postgresql://db/jobs\nJOBPUB_BATCH_SIZE=250\n"
    )
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    assert settings.batch_size == 250
    assert settings.database_url.get_secret_value() == "postgresql://db/jobs"
    assert "postgresql" not in repr(settings), "secrets stay out of reprs"


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No JOBPUB_* variable and no .env but those a test sets."""
    for name in [n for n in os.environ if n.startswith("JOBPUB_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://h1,h2:5433/jobs?target_session_attrs=read-write",
        "postgresql://app:pw@[::1]:5432,db2/jobs",
        "host=h1,h2 port=5432,5433 dbname=jobs target_session_attrs=read-write",
    ],
)
def test_multi_host_database_urls_are_accepted(url: str) -> None:
    settings = Settings(database_url=url)
    assert settings.database_url.get_secret_value() == url


def test_a_garbled_database_url_gives_one_line_without_the_value(
    clean_environment: pytest.MonkeyPatch,
) -> None:
    clean_environment.setenv("JOBPUB_DATABASE_URL", "postgresql://app:hunter2@h1,h2:port/jobs")
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert (
        describe_errors(caught.value)
        == "invalid settings: JOBPUB_DATABASE_URL: has an invalid port"
    )


@pytest.mark.parametrize(
    ("tls_setting", "value"),
    [("mqtt_ca_file", "ca.pem"), ("mqtt_cert_file", "c.pem"), ("mqtt_key_file", "k.pem")],
)
def test_tls_files_with_plain_mqtt_are_refused(tls_setting: str, value: str) -> None:
    files: dict[str, Any] = {tls_setting: Path(value)}
    if tls_setting in ("mqtt_cert_file", "mqtt_key_file"):  # they go together
        files = {"mqtt_cert_file": Path("c.pem"), "mqtt_key_file": Path("k.pem")}
    with pytest.raises(ValidationError, match=r"needs? an mqtts:// JOBPUB_MQTT_URL"):
        Settings(database_url="postgresql://db/x", mqtt_url="mqtt://broker", **files)
    settings = Settings(database_url="postgresql://db/x", mqtt_url="mqtts://broker", **files)
    assert settings.mqtt.tls


def test_a_password_without_a_user_name_is_refused_on_mqtt_311_only() -> None:
    url = "mqtt://:secret@broker"
    with pytest.raises(ValidationError, match=r"password without a user name") as caught:
        Settings(database_url="postgresql://db/x", mqtt_url=url, mqtt_protocol="3.1.1")
    assert "secret" not in describe_errors(caught.value)
    assert Settings(database_url="postgresql://db/x", mqtt_url=url, mqtt_protocol="5").mqtt.password
    named = Settings(
        database_url="postgresql://db/x", mqtt_url="mqtt://u:secret@broker", mqtt_protocol="3.1.1"
    )
    assert named.mqtt.username == "u"


def test_the_broker_as_logged_has_no_password() -> None:
    settings = Settings(database_url="postgresql://db/x", mqtt_url="mqtts://dev:s3cr%40t@broker")
    assert str(settings.mqtt) == "mqtts://dev@broker:8883"


def test_the_database_url_as_logged_has_no_password() -> None:
    assert redact_url("postgresql://u@h/db?password=s3cret") == "postgresql://u@h/db?password=***"
    assert redact_url("host=h password='s 3' dbname=x") == "host=h password=*** dbname=x"
    assert redact_url("postgresql://u:pw@h1,h2:5433/db") == "postgresql://u:***@h1,h2:5433/db"


@pytest.mark.parametrize("value", ["0", "2592001"])
def test_retry_delays_are_bounded(value: str, clean_environment: pytest.MonkeyPatch) -> None:
    clean_environment.setenv("JOBPUB_DATABASE_URL", "postgresql://db/x")
    clean_environment.setenv("JOBPUB_RETRY_BACKOFF_MAX", value)
    with pytest.raises(ValidationError, match="retry_backoff_max"):
        Settings()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"probe_topic": "a/#"}, "JOBPUB_PROBE_TOPIC: topic contains a wildcard"),
        ({"probe_topic": "a", "probe_interval": 0.1}, "JOBPUB_PROBE_INTERVAL: Input should be"),
        ({"probe_topic": "a", "probe_timeout": 0}, "JOBPUB_PROBE_TIMEOUT: Input should be"),
        ({"probe_topic": "x/p", "topic_prefixes": "a/"}, "outside JOBPUB_TOPIC_PREFIXES"),
        ({"probe_topic": "a", "transaction_pooling": True}, "does not keep"),
    ],
)
def test_bad_probe_settings_are_refused_with_their_reason(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        Settings(database_url="postgresql://db/jobs", **overrides)
    assert message in describe_errors(caught.value)


@pytest.mark.parametrize("topic", [None, ""])
def test_the_probe_is_off_without_a_topic(topic: str | None) -> None:
    settings = Settings(database_url="postgresql://db/jobs", probe_topic=topic)
    assert not settings.probe_topic
