"""Plain data that crosses module boundaries: a claimed job and what became of it."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple


class Job(NamedTuple):
    """A claimed row. `due_in` is `fire_at - now()` in seconds on the database clock.

    `version` is the row version claimed (its xmin): changed means updated since.
    A NamedTuple, not a dataclass: `Job._make(row)` builds one from a database row at
    a third of a frozen dataclass's cost, and a claim builds a thousand at a time.
    """

    id: int
    topic: str
    payload: str
    qos: int
    retain: bool
    due_in: float
    version: str = ""


class Delivery(enum.Enum):
    PUBLISHED = "published"  # acknowledged by the broker (QoS 1/2) or written (QoS 0)
    REJECTED = "rejected"  # can never be published: the row goes dead at once
    FAILED = "failed"  # this attempt failed: retried with backoff, dead after max attempts
    NOT_SENT = "not_sent"  # never reached the broker, or its fate is unknown: released as is


@dataclass(frozen=True, slots=True)
class Outcome:
    delivery: Delivery
    reason: str = ""  # short, bounded vocabulary: a metric label
    error: str = ""  # human text stored on the row


PUBLISHED = Outcome(Delivery.PUBLISHED)


def not_sent(reason: str, error: str) -> Outcome:
    return Outcome(Delivery.NOT_SENT, reason, error)


@dataclass(frozen=True, slots=True)
class Settled:
    """Counts after a batch's outcomes were written to the database."""

    published: int
    dead: int
    retrying: int
    released: int
    commit_lost: bool = False  # the connection died before the commit; marked anew
