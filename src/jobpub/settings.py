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

from jobpub.conninfo import check_conninfo, redact_conninfo
from jobpub.mqtt import topic_problem


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
    check_conninfo(url.get_secret_value())  # a URL (one host or several) or key=value pairs
    return url


def _check_mqtt_url(url: SecretStr) -> SecretStr:
    parse_mqtt_url(url.get_secret_value())
    return url


def redact_url(url: str) -> str:
    """The database connection string without its passwords, for logs and errors."""
    return redact_conninfo(url)


PositiveSeconds = Annotated[float, Field(gt=0)]
# A retry delay: at most 30 days, so that a doubled delay stays a PostgreSQL interval.
RetrySeconds = Annotated[float, Field(gt=0, le=30 * 86400)]


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
    # 25 attempts, doubling from 1 s up to an hour: a job outlives 6.6-13.1 hours of
    # refusals before it is dead (docs/reliability.md; tests/unit/test_retry_lifetime.py).
    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 25
    retry_backoff: RetrySeconds = 1.0
    retry_backoff_max: RetrySeconds = 3600.0
    # A row whose payload is longer goes dead unread (its size is read from the row's
    # header). Below the deploy broker's 1 MiB packet limit (deploy/mosquitto), and at
    # managed brokers' size (Azure IoT Hub 256 KB; AWS IoT Core 128 KB): raise it with the
    # broker's limit. The batch bound caps what one claim reads, so a replica's memory
    # holds at most (batch_max_bytes + one row) x concurrency of rows, whatever their sizes.
    max_payload_bytes: Annotated[int, Field(ge=1, le=268_435_455)] = 256 * 1024
    batch_max_bytes: Annotated[int, Field(ge=1, le=1 << 30)] = 4 * 1024 * 1024
    shutdown_timeout: PositiveSeconds = 10.0
    backlog_interval: PositiveSeconds = 15.0

    # Seconds a database session may sit in an open transaction or run one statement. A
    # claim's rows stay locked while its batch is held for its fire_at (at most the
    # lookahead) and waits for acks (at most the ack timeout), so this must exceed both
    # together; 45 s does for the default ack timeout and any lookahead (at most 10 s).
    # A frozen replica's rows are free this long after its last statement.
    hold_timeout: PositiveSeconds = 45.0

    @model_validator(mode="after")
    def _check_hold_timeout(self) -> Settings:
        longest_hold = self.mqtt_ack_timeout + self.lookahead
        if self.hold_timeout <= longest_hold:
            raise ValueError(
                f"JOBPUB_HOLD_TIMEOUT ({self.hold_timeout:g} s) must exceed "
                f"JOBPUB_MQTT_ACK_TIMEOUT + JOBPUB_LOOKAHEAD ({longest_hold:g} s): a batch "
                "still waiting for its acks would lose its row locks, and its rows could "
                "be published twice"
            )
        return self

    # Messages per second for the whole fleet (0: no limit). Each replica takes an equal
    # share, the limit over the live replicas of jobpub_replicas, recounted at each of its
    # heartbeats; rows held back are late, never dropped. A replica's row is refreshed
    # every heartbeat_interval seconds and removed by any replica once it is older than
    # replica_stale_after (a killed replica), so the others' shares grow again.
    rate_limit: Annotated[float, Field(ge=0, le=10_000_000)] = 0.0
    heartbeat_interval: PositiveSeconds = 3.0
    replica_stale_after: PositiveSeconds = 15.0

    @model_validator(mode="after")
    def _check_heartbeat(self) -> Settings:
        if self.replica_stale_after <= 2 * self.heartbeat_interval:
            raise ValueError(
                f"JOBPUB_REPLICA_STALE_AFTER ({self.replica_stale_after:g} s) must exceed twice "
                f"JOBPUB_HEARTBEAT_INTERVAL ({self.heartbeat_interval:g} s): one late heartbeat "
                "would remove a live replica"
            )
        return self

    # Comma-separated topic prefixes rows may publish to ("" allows every topic); a row
    # outside them goes dead, so a producer cannot reach $SYS or another tenant's tree.
    topic_prefixes: str = ""

    # Recurring schedules: each occurrence is materialised as a jobs row this long before
    # it is due (visible and cancellable), by every replica's materialiser sharing the
    # work. 60 s keeps an every-1-second schedule at about 60 pending rows.
    schedule_horizon: Annotated[float, Field(ge=2, le=86400)] = 60.0

    # Connecting through PgBouncer in transaction mode (or another transaction pooler):
    # no prepared statements and no LISTEN; new rows are found by polling.
    transaction_pooling: bool = False

    # Seconds a finished row is kept before a replica deletes it: published rows after
    # `retention` (7 days), dead ones after `dead_retention` (30 days, time to requeue or
    # look into them); 0 keeps them forever. Seconds, as every duration setting here.
    retention: Annotated[float, Field(ge=0, le=100 * 365 * 86400)] = 7 * 86400.0
    dead_retention: Annotated[float, Field(ge=0, le=100 * 365 * 86400)] = 30 * 86400.0
    # `jobpub web` (docs/web.md): where the dashboard and REST API listen, and the
    # Bearer tokens they take. Without JOBPUB_WEB_TOKEN the server runs without
    # authentication and therefore binds 127.0.0.1 only; the read-only token may only GET.
    web_host: str = "127.0.0.1"
    web_port: Annotated[int, Field(ge=0, le=65535)] = 8081
    web_token: Annotated[SecretStr, Field(min_length=16)] | None = None
    web_readonly_token: Annotated[SecretStr, Field(min_length=16)] | None = None

    # The end-to-end delivery probe (docs/reliability.md), off while probe_topic is empty:
    # a probe job every probe_interval seconds on that topic, received back by one elected
    # replica; a probe the broker acknowledged but that has not arrived probe_timeout
    # seconds later counts as missing.
    probe_topic: str | None = None
    probe_interval: Annotated[float, Field(ge=0.5, le=86400)] = 30.0
    probe_timeout: Annotated[float, Field(ge=0.5, le=86400)] = 10.0

    @model_validator(mode="after")
    def _check_probe(self) -> Settings:
        if not self.probe_topic:  # unset or empty: the probe is off
            return self
        problem = topic_problem(self.probe_topic)
        if problem:
            raise ValueError(f"JOBPUB_PROBE_TOPIC: {problem}")
        prefixes = self.allowed_topic_prefixes
        if prefixes and not self.probe_topic.startswith(prefixes):
            raise ValueError(
                "JOBPUB_PROBE_TOPIC is outside JOBPUB_TOPIC_PREFIXES: every probe would go dead"
            )
        if self.transaction_pooling:
            raise ValueError(
                "JOBPUB_PROBE_TOPIC needs a session-level advisory lock to elect its "
                "subscriber, which JOBPUB_TRANSACTION_POOLING (PgBouncer transaction mode) "
                "does not keep; leave the probe off behind a transaction pooler"
            )
        return self

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

    @model_validator(mode="after")
    def _check_broker(self) -> Settings:
        tls_files = {
            "JOBPUB_MQTT_CA_FILE": self.mqtt_ca_file,
            "JOBPUB_MQTT_CERT_FILE": self.mqtt_cert_file,
            "JOBPUB_MQTT_KEY_FILE": self.mqtt_key_file,
        }
        given = [name for name, value in tls_files.items() if value is not None]
        if given and not self.mqtt.tls:
            # Ignoring them would send the password in clear to a broker never verified.
            verb = "needs" if len(given) == 1 else "need"
            raise ValueError(f"{', '.join(given)} {verb} an mqtts:// JOBPUB_MQTT_URL")
        if self.mqtt_protocol == "3.1.1" and self.mqtt.password and not self.mqtt.username:
            # MQTT 3.1.1, 3.1.2.9: a password flag without a user name flag is a
            # protocol violation; brokers hang up, and jobpub would reconnect forever.
            raise ValueError(
                "JOBPUB_MQTT_URL has a password without a user name, "
                "which JOBPUB_MQTT_PROTOCOL=3.1.1 does not allow"
            )
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
