"""Input checks shared by the API and the dashboard's forms, with messages to act on."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator

from jobpub.scheduling.durations import parse_duration

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_topic(topic: str) -> str:
    """The jobs table's own checks (sql/0001, 0005), said before the INSERT."""
    if not topic:
        raise ValueError("a topic may not be empty")
    if "+" in topic or "#" in topic:
        raise ValueError("a topic may not contain + or # (those are subscription wildcards)")
    if _CONTROL.search(topic):
        raise ValueError("a topic may not contain control characters")
    if len(topic.encode()) > 65535:
        raise ValueError("a topic may be at most 65535 bytes long")
    return topic


def check_filter(topic_filter: str) -> str:
    """What the pauses table cannot say clearly; it checks the levels (jobpub.db.pauses)."""
    if not topic_filter:
        raise ValueError("a filter may not be empty; '#' matches every topic")
    if _CONTROL.search(topic_filter):
        raise ValueError("a filter may not contain control characters")
    return topic_filter


def outside_prefixes(topic: str, prefixes: tuple[str, ...]) -> str | None:
    """Why a topic is refused by JOBPUB_TOPIC_PREFIXES, or None."""
    if not prefixes or topic.startswith(prefixes):
        return None
    return f"topic {topic!r} is outside the allowed prefixes {', '.join(prefixes)}"


def _duration(value: Any) -> Any:
    if isinstance(value, str) and value and not value.startswith(("P", "-P")):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise ValueError(f"{exc} (or ISO 8601, such as PT30S, or a number of seconds)") from exc
    return value


Topic = Annotated[str, AfterValidator(check_topic)]
# "30s", "1h30m", ISO 8601 ("PT30S") or a number of seconds.
Duration = Annotated[timedelta, BeforeValidator(_duration)]
