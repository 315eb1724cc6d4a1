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
    payload: str  # '' when the payload is binary (payload_bytes)
    qos: int
    retain: bool
    due_in: float
    version: str = ""
    payload_bytes: bytes | None = None  # published instead of `payload` when set
    # MQTT 5 properties (dropped on a 3.1.1 connection).
    content_type: str | None = None
    user_properties: dict[str, str] | None = None
    response_topic: str | None = None
    correlation_data: bytes | None = None
    # When the job expires, on time.monotonic()'s clock (None: never). The claim returns
    # seconds left on the database clock; the Claimer turns them into this deadline.
    expires: float | None = None

    @property
    def plain(self) -> bool:
        """A text payload, no properties and no expiry: the publish path's common case."""
        return (
            self.expires is None
            and self.payload_bytes is None
            and self.user_properties is None
            and self.content_type is None
            and self.response_topic is None
            and self.correlation_data is None
        )


class Delivery(enum.Enum):
    PUBLISHED = "published"  # acknowledged by the broker (QoS 1/2) or written (QoS 0)
    REJECTED = "rejected"  # can never be published: the row goes dead at once
    FAILED = "failed"  # this attempt failed: retried with backoff, dead after max attempts
    NOT_SENT = "not_sent"  # never reached the broker, or its fate is unknown: released as is
    EXPIRED = "expired"  # its expires_at passed before it was sent: ends expired, unsent


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
    expired: int = 0  # ended expired: claimed after their expiry, or it passed while held
