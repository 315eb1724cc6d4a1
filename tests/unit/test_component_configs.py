"""Settings are parsed once and cut into small configs by the composition root."""

from __future__ import annotations

from jobpub import app
from testbed.daemon import make_settings


def test_the_broker_url_is_parsed_once() -> None:
    settings = make_settings("postgresql://u@db/jobs", "mqtts://user:secret@broker:8884")
    endpoint = settings.mqtt
    assert endpoint is settings.mqtt
    assert (endpoint.host, endpoint.port, endpoint.tls, endpoint.username) == (
        "broker", 8884, True, "user",
    )  # fmt: skip
    assert endpoint.password is not None
    assert endpoint.password.get_secret_value() == "secret"


def test_each_component_gets_only_its_settings() -> None:
    settings = make_settings("postgresql://u@db/jobs", "mqtt://broker", batch_size=7,
                             concurrency=3, max_attempts=9)  # fmt: skip
    assert app._database_config(settings).pool_size == 3
    assert app._claim_config(settings).limit == 7
    assert app._retry_policy(settings).max_attempts == 9
    assert app._relay_config(settings).batch_size == 7
