"""Settings, read once from `JOBPUB_*` environment variables (or a `.env` file).

Built at the entry point and passed down; nothing else reads the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit

from pydantic import (
    AfterValidator,
    Field,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class SettingsFileError(Exception):
    """A JOBPUB_*_FILE variable names a file that cannot be read."""


class _SecretFiles(PydanticBaseSettingsSource):
    """`JOBPUB_<NAME>_FILE=/run/secrets/x`: the setting is that file's content.

    For Docker and Kubernetes secrets; trailing newlines are dropped. A plain
    `JOBPUB_<NAME>` wins when both are set.
    """

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in self.settings_cls.model_fields:
            variable = f"JOBPUB_{name.upper()}_FILE"
            path = os.environ.get(variable)
            if not path:
                continue
            try:
                values[name] = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise SettingsFileError(f"{variable}: cannot read {path}: {exc.strerror}") from exc
        return values


@dataclass(frozen=True)
class MqttEndpoint:
    host: str
    port: int
    tls: bool
    username: str | None
    password: SecretStr | None

    def __str__(self) -> str:  # for logs: never the password
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


def parse_mqtt_url(url: str) -> MqttEndpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ValueError("must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ValueError("has no host")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError("has an invalid port") from exc
    tls = parts.scheme == "mqtts"
    return MqttEndpoint(
        host=parts.hostname,
        port=port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=SecretStr(unquote(parts.password)) if parts.password else None,
    )


def _check_database_url(url: SecretStr) -> SecretStr:
    parts = urlsplit(url.get_secret_value())
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("must start with postgresql://")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError("has an invalid port") from exc
    return url


def _check_mqtt_url(url: SecretStr) -> SecretStr:
    parse_mqtt_url(url.get_secret_value())
    return url


def redact_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


PositiveSeconds = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """Every setting of `jobpub`. Environment: JOBPUB_<NAME>; a `.env` file is read too."""

    model_config = SettingsConfigDict(
        env_prefix="JOBPUB_",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    database_url: Annotated[SecretStr, AfterValidator(_check_database_url)]
    mqtt_url: Annotated[SecretStr, AfterValidator(_check_mqtt_url)] = SecretStr(
        "mqtt://localhost:1883"
    )
    mqtt_protocol: Literal["5", "3.1.1"] = "5"
    mqtt_client_id_prefix: Annotated[str, Field(min_length=1, max_length=16)] = "jobpub"
    mqtt_keepalive: Annotated[int, Field(ge=5, le=65535)] = 30
    mqtt_inflight: Annotated[int, Field(ge=1, le=65535)] = 1000
    mqtt_ack_timeout: PositiveSeconds = 30.0
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None

    http_host: str = "0.0.0.0"  # noqa: S104 - the daemon runs in a container; scrape from outside
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080

    # Rows per claim. A replica that dies mid-batch leaves what it had sent but not yet
    # committed to be published again: up to batch_size x concurrency rows. 250 x 2
    # still drains well above 20,000 jobs/s with one replica on 2 cores (README,
    # Performance); 1,000 x 2 was about 10% faster with four times the exposure.
    batch_size: Annotated[int, Field(ge=1, le=50_000)] = 250
    concurrency: Annotated[int, Field(ge=1, le=64)] = 2
    poll_interval: PositiveSeconds = 5.0
    # Seconds: claim rows due this soon, hold them, publish each at its time. A batch
    # commits after its last row, so its first rows wait up to this long exposed to a
    # crash. 20 ms kept on-time p99 at 3.3-3.8 ms (as 50 ms did) and cut a killed
    # replica's duplicates at 6,000 jobs/s from 54 to 17-31 (bench on-time, bench chaos).
    lookahead: Annotated[float, Field(ge=0, le=10)] = 0.02
    consumer_count: Annotated[int, Field(ge=1)] = 1
    consumer_index: Annotated[int, Field(ge=0)] = 0
    takeover_delay: PositiveSeconds = 30.0
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 5
    retry_backoff: PositiveSeconds = 1.0
    retry_backoff_max: PositiveSeconds = 300.0
    # A row whose payload is longer goes dead unread (its size is read from the row's
    # header). Below the deploy broker's 1 MiB packet limit (deploy/mosquitto), and at
    # managed brokers' size (Azure IoT Hub 256 KB; AWS IoT Core 128 KB): raise it with the
    # broker's limit. The batch bound caps what one claim reads, so a replica's memory
    # holds at most (batch_max_bytes + one row) x concurrency of rows, whatever their sizes.
    max_payload_bytes: Annotated[int, Field(ge=1, le=268_435_455)] = 256 * 1024
    batch_max_bytes: Annotated[int, Field(ge=1, le=1 << 30)] = 4 * 1024 * 1024
    shutdown_timeout: PositiveSeconds = 10.0
    backlog_interval: PositiveSeconds = 15.0

    # Comma-separated topic prefixes rows may publish to ("" allows every topic); a row
    # outside them goes dead, so a producer cannot reach $SYS or another tenant's tree.
    topic_prefixes: str = ""

    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _SecretFiles(settings_cls), dotenv_settings)

    @property
    def allowed_topic_prefixes(self) -> tuple[str, ...]:
        return tuple(p.strip() for p in self.topic_prefixes.split(",") if p.strip())

    @model_validator(mode="after")
    def _check_partition(self) -> Settings:
        if self.consumer_index >= self.consumer_count:
            raise ValueError(
                f"JOBPUB_CONSUMER_INDEX ({self.consumer_index}) must be below "
                f"JOBPUB_CONSUMER_COUNT ({self.consumer_count}); indexes are 0-based"
            )
        if (self.mqtt_cert_file is None) != (self.mqtt_key_file is None):
            raise ValueError("JOBPUB_MQTT_CERT_FILE and JOBPUB_MQTT_KEY_FILE go together")
        return self

    @cached_property
    def mqtt(self) -> MqttEndpoint:
        """The broker URL parsed, once (the validator has checked it parses)."""
        return parse_mqtt_url(self.mqtt_url.get_secret_value())


def describe_errors(error: ValidationError) -> str:
    """One line naming each bad variable, never echoing its value (it may be a secret)."""
    problems = []
    for item in error.errors():
        where = "_".join(str(part) for part in item["loc"]).upper()
        message = item["msg"].removeprefix("Value error, ")
        problems.append(f"JOBPUB_{where}: {message}" if where else message)
    return "invalid settings: " + "; ".join(problems)
