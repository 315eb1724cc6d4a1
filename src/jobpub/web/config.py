"""What `jobpub web` needs of the settings, built by the CLI (only cli and app read Settings)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WebConfig:
    database_url: str  # holds the password: never logged
    host: str = "127.0.0.1"
    port: int = 8081
    token: str | None = None  # None: no authentication, and then 127.0.0.1 only
    readonly_token: str | None = None
    topic_prefixes: tuple[str, ...] = ()  # JOBPUB_TOPIC_PREFIXES: a new job must match one
    # JOBPUB_REPLICA_STALE_AFTER: a replica whose heartbeat is older is not counted live.
    replica_stale_after: float = 15.0

    @property
    def open_access(self) -> bool:
        """No token: whoever reaches the server may do anything (so it must be local)."""
        return self.token is None


def is_loopback(host: str) -> bool:
    """True for a host only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind_refusal(config: WebConfig) -> str | None:
    """Why the server must not start with this configuration, or None."""
    if config.readonly_token is not None and config.token is None:
        return "JOBPUB_WEB_READONLY_TOKEN needs JOBPUB_WEB_TOKEN too"
    if config.token is not None and config.token == config.readonly_token:
        return "JOBPUB_WEB_READONLY_TOKEN must differ from JOBPUB_WEB_TOKEN"
    for name, token in (("JOBPUB_WEB_TOKEN", config.token),
                        ("JOBPUB_WEB_READONLY_TOKEN", config.readonly_token)):  # fmt: skip
        if token is not None and token.startswith("change-me"):
            return f"{name} is still the placeholder of .env.example; set a secret of your own"
    if config.open_access and not is_loopback(config.host):
        return (
            f"JOBPUB_WEB_HOST={config.host} without JOBPUB_WEB_TOKEN would serve the queue "
            "to anyone who can reach it; set JOBPUB_WEB_TOKEN, or bind 127.0.0.1"
        )
    return None
