"""The compose stack's accounts (deploy/): its broker's ACL on a real Mosquitto, its
database role script on a real PostgreSQL, and the refusals of missing or example secrets.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from testbed.broker import free_port, port_open
from testbed.postgres_server import start_postgres
from testbed.waiting import wait_until

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ACCOUNTS_SCRIPT = DEPLOY / "mosquitto" / "accounts.sh"
PUBLISHER_PASSWORD, READER_PASSWORD = "pub-s3cret", "read s3cret"
SECRETS = {
    "MQTT_PUBLISHER_PASSWORD": PUBLISHER_PASSWORD,
    "MQTT_READER_PASSWORD": READER_PASSWORD,
    "TOPIC_PREFIXES": "home/, job/",
}
DATABASE_SECRETS = {"POSTGRES_PASSWORD": "pg-s3cret", "PUBLISHER_DB_PASSWORD": "from 'the' env"}


def environment(**variables: str) -> dict[str, str]:
    """This process's environment without the deploy secrets, plus `variables`."""
    names = {*SECRETS, "POSTGRES_PASSWORD", "PUBLISHER_DB_PASSWORD"}
    return {k: v for k, v in os.environ.items() if k not in names} | variables


def rewritten(text: str, replacements: dict[str, str]) -> str:
    """`text` with each replacement made; fails if the shipped file no longer has one."""
    for old, new in replacements.items():
        assert old in text, f"deploy config no longer contains {old!r}"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def compose_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Mosquitto as compose runs it (compose.conf including mosquitto.conf, accounts from
    accounts.sh), with the container's paths moved into a temporary directory; its port."""
    directory = tmp_path_factory.mktemp("compose-broker")
    subprocess.run(
        ["sh", str(ACCOUNTS_SCRIPT), str(directory / "auth")],
        env=environment(**SECRETS), check=True, timeout=30,
    )  # fmt: skip
    included = directory / "conf.d"
    included.mkdir()
    (included / "mosquitto.conf").write_text(
        rewritten(
            (DEPLOY / "mosquitto" / "mosquitto.conf").read_text(),
            {"persistence_location /mosquitto/data/": f"persistence_location {directory}/"},
        )
    )
    port = free_port()
    main = rewritten(
        (DEPLOY / "mosquitto" / "compose.conf").read_text(),
        {
            "listener 1883\n": f"listener {port} 127.0.0.1\n",
            "/mosquitto/auth/": f"{directory}/auth/",
            "include_dir /mosquitto/config/conf.d": f"include_dir {included}",
        },
    )
    # As root, mosquitto would switch to a user that cannot reach pytest's tmp.
    config = directory / "compose.conf"
    config.write_text(main + ("user root\n" if os.geteuid() == 0 else ""))
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with (directory / "mosquitto.log").open("wb") as log:
        process = subprocess.Popen([binary, "-c", str(config)], stdout=log, stderr=log)
    try:
        wait_until(lambda: port_open(port) or process.poll() is not None, 10, "the compose broker")
        assert process.poll() is None, (directory / "mosquitto.log").read_text()
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@dataclass
class Session:
    """A paho-mqtt MQTT 5 client: its CONNACK, what it receives, its PUBACK reasons."""

    port: int
    username: str | None = None
    password: str | None = None
    connack: ReasonCode | None = None
    connack_properties: Properties | None = None
    received: list[tuple[str, bytes]] = field(default_factory=list)
    puback: dict[int, ReasonCode] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"deploy-auth-{uuid.uuid4().hex[:8]}",
            protocol=MQTTProtocolVersion.MQTTv5,
        )
        if self.username is not None:
            self.client.username_pw_set(self.username, self.password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish

    def __enter__(self) -> Session:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        wait_until(lambda: self.connack is not None, 10, "CONNACK")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(
        self, _: mqtt.Client, __: object, ___: object, code: ReasonCode, props: Properties | None
    ) -> None:
        self.connack_properties = props
        self.connack = code

    def _on_message(self, _: mqtt.Client, __: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.received.append((message.topic, bytes(message.payload)))

    def _on_publish(
        self, _: mqtt.Client, __: object, mid: int, code: ReasonCode, ___: Properties | None
    ) -> None:
        with self._lock:
            self.puback[mid] = code

    def subscribe(self, topic_filter: str) -> None:
        granted: list[ReasonCode] = []
        self.client.on_subscribe = lambda _c, _u, _m, codes, _p: granted.extend(codes)
        self.client.subscribe(topic_filter, qos=1)
        wait_until(lambda: bool(granted), 10, f"SUBACK for {topic_filter}")
        assert not granted[0].is_failure, granted

    def publish_acked(self, topic: str, payload: bytes) -> ReasonCode:
        """Publish at QoS 1 and wait for the broker's PUBACK; its reason code."""
        mid = self.client.publish(topic, payload, qos=1).mid
        wait_until(lambda: mid in self.puback, 10, f"PUBACK for {topic}")
        return self.puback[mid]

    def messages(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.received)


def refused_publish(port: int, username: str, password: str, topic: str) -> str:
    """The PUBACK reason for one publish, from a session of its own: Mosquitto 2.0.11
    closes a connection after it refused a publish, and the subscriptions go with it."""
    with Session(port, username, password) as session:
        return session.publish_acked(topic, b"refused?").getName()


@pytest.mark.parametrize(
    ("username", "password"),
    [(None, None), ("publisher", READER_PASSWORD), ("reader", ""), ("nobody", "x")],
)
def test_anonymous_clients_and_wrong_passwords_are_refused(
    compose_broker: int, username: str | None, password: str | None
) -> None:
    with Session(compose_broker, username, password) as refused:
        assert refused.connack is not None
        # 2.0.11 answers 0x87 for both; later releases answer 0x86 for a bad password.
        assert refused.connack.getName() in ("Not authorized", "Bad user name or password")


def test_the_broker_keeps_the_shared_delivery_settings(compose_broker: int) -> None:
    """compose.conf includes mosquitto.conf: its limit reaches clients at CONNACK."""
    with Session(compose_broker, "reader", READER_PASSWORD) as reader:
        assert reader.connack is not None
        assert not reader.connack.is_failure
        assert reader.connack_properties is not None
        assert getattr(reader.connack_properties, "MaximumPacketSize", None) == 1048576


def test_the_publisher_writes_only_below_its_prefixes(compose_broker: int) -> None:
    with (
        Session(compose_broker, "reader", READER_PASSWORD) as reader,
        Session(compose_broker, "publisher", PUBLISHER_PASSWORD) as publisher,
    ):
        reader.subscribe("#")
        for topic in ("garage/door", "homes/1", "$SYS/fake", "jobs/1"):
            assert refused_publish(compose_broker, "publisher", PUBLISHER_PASSWORD, topic) == (
                "Not authorized"
            )
        # The refused publishes were answered before these were sent: had the broker
        # passed one on, the reader would have received it before them.
        assert not publisher.publish_acked("home/valve/7", b"open").is_failure
        assert not publisher.publish_acked("job/test/topic", b"last").is_failure
        wait_until(lambda: len(reader.messages()) >= 2, 10, "the publisher's messages")
        assert reader.messages() == [("home/valve/7", b"open"), ("job/test/topic", b"last")]


def test_the_reader_receives_but_cannot_publish(compose_broker: int) -> None:
    with (
        Session(compose_broker, "reader", READER_PASSWORD) as reader,
        Session(compose_broker, "publisher", PUBLISHER_PASSWORD) as publisher,
    ):
        reader.subscribe("home/#")
        assert refused_publish(compose_broker, "reader", READER_PASSWORD, "home/valve/7") == (
            "Not authorized"
        )
        assert not publisher.publish_acked("home/valve/7", b"from jobpub").is_failure
        wait_until(lambda: bool(reader.messages()), 10, "the publisher's message")
        assert reader.messages() == [("home/valve/7", b"from jobpub")]


@pytest.mark.parametrize(
    ("variables", "refusal"),
    [
        ({"MQTT_READER_PASSWORD": ""}, "MQTT_READER_PASSWORD"),
        ({"MQTT_PUBLISHER_PASSWORD": "change-me-mqtt-publisher"}, "MQTT_PUBLISHER_PASSWORD"),
        ({"MQTT_READER_PASSWORD": "a:b"}, "must not contain ':'"),
        ({"TOPIC_PREFIXES": "home"}, "'home' must end with '/'"),
        ({"TOPIC_PREFIXES": "home/+/"}, "'home/+/' must end with '/' and hold no +"),
        ({"TOPIC_PREFIXES": " , "}, "names no prefix"),
    ],
)
def test_the_broker_accounts_refuse_missing_or_example_secrets(
    tmp_path: Path, variables: dict[str, str], refusal: str
) -> None:
    result = subprocess.run(
        ["sh", str(ACCOUNTS_SCRIPT), str(tmp_path / "auth")],
        env=environment(**(SECRETS | variables)),
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert refusal in result.stderr


@pytest.mark.parametrize(
    "variables",
    [
        {"PUBLISHER_DB_PASSWORD": "db-s3cret"},
        {"POSTGRES_PASSWORD": "change-me-postgres", "PUBLISHER_DB_PASSWORD": "db-s3cret"},
        {"POSTGRES_PASSWORD": "pg-s3cret", "PUBLISHER_DB_PASSWORD": "change-me-publisher-db"},
    ],
)
def test_the_database_refuses_missing_or_example_secrets_before_it_initialises(
    variables: dict[str, str],
) -> None:
    result = subprocess.run(
        ["sh", str(DEPLOY / "postgres" / "refuse-placeholders.sh"), "echo", "initialised"],
        env=environment(**variables), capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert result.returncode != 0
    assert "initialised" not in result.stdout
    assert "set a password of your own in .env" in result.stderr


def test_the_database_starts_with_passwords_of_its_own() -> None:
    result = subprocess.run(
        ["sh", str(DEPLOY / "postgres" / "refuse-placeholders.sh"), "echo", "initialised"],
        env=environment(**DATABASE_SECRETS),
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    assert result.stdout == "initialised\n"


def test_the_roles_script_takes_the_publisher_password_from_the_environment() -> None:
    roles = str(DEPLOY / "postgres" / "10-jobpub-roles.sql")
    with start_postgres() as server:
        psql = ["psql", server.admin_url, "-v", "ON_ERROR_STOP=1", "--no-psqlrc", "-f", roles]
        unset = subprocess.run(
            psql, env=environment(), capture_output=True, text=True, check=False, timeout=30
        )
        assert unset.returncode != 0
        assert "PUBLISHER_DB_PASSWORD is not set" in unset.stderr
        subprocess.run(
            psql, env=environment(**DATABASE_SECRETS),
            capture_output=True, check=True, timeout=30,
        )  # fmt: skip
        url = f"postgresql://jobpub_publisher@127.0.0.1:{server.port}/postgres"
        password = DATABASE_SECRETS["PUBLISHER_DB_PASSWORD"]
        with psycopg.connect(url, password=password) as conn:
            member = conn.execute("SELECT pg_has_role('jobpub_daemon', 'MEMBER')").fetchone()
            assert member == (True,)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(url, password=password + "x").close()
