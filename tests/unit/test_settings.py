"""Settings: parsing, validation messages, secrets kept out of text."""

from __future__ import annotations

from pathlib import Path

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
