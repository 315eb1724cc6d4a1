"""Database health: one owner, explicit states, and the recovery constants side by side.

After connections to the database are lost, two things must happen in order: the
replica that lost a commit marks the rows the broker already has (on a new connection,
jobpub.db.complete), and only then may any replica claim again (REJOIN_DELAY).
"""

from __future__ import annotations

import enum
import time

# How long a replica keeps trying to mark rows whose commit was lost. While the
# database is away no replica can claim them again, and a restart's shutdown checkpoint
# can take many seconds (2.7 s here under load, far longer with large shared_buffers).
# Well under STALLED_AFTER, after which /healthz calls a claim loop waiting on its
# slots stalled.
MARK_AFTER_LOSS_WITHIN = 30.0
# Between those attempts: short enough to mark well within REJOIN_DELAY once the
# database answers, long enough not to hammer a server that is starting up.
MARK_AFTER_LOSS_RETRY_MAX_S = 0.25
# Once the database answers again after a loss, wait this long before claiming: the
# rows others were publishing lost their locks with their connections, and as the
# oldest due rows a claim would take them first. Their owners mark them within about
# 0.6 s near capacity (measured); claiming at once published them twice.
REJOIN_DELAY = 1.0
# /healthz turns red when the claim loop has not come round for this long, or longer
# where the settings allow longer waits (stalled_after).
STALLED_AFTER = 60.0


class DatabaseState(enum.Enum):
    STARTING = "starting"  # no claim has succeeded yet
    OK = "ok"  # the last claim succeeded
    FAILING = "failing"  # statements fail (a permission, a bad row): retried, not ready
    LOST = "lost"  # connections were lost: wait for the database, then rejoin
    REJOINING = "rejoining"  # it answers again: REJOIN_DELAY before claiming


_READY = frozenset({DatabaseState.OK, DatabaseState.REJOINING})
_OUTAGE = frozenset({DatabaseState.FAILING, DatabaseState.LOST})


class DatabaseHealth:
    """What the relay knows about the database, for its claim loop, /readyz and metrics.

    The state moves only in the claim loop (`claimed`, `failed`, `rejoining`). Delivery
    tasks only report what they saw (`report_commit_lost`, `report_settle_failed`) into
    counters of their own, which the claim loop takes in: no field has two writers.
    """

    def __init__(self) -> None:
        self._state = DatabaseState.STARTING
        self._commits_lost = 0  # written by delivery tasks only
        self._commits_lost_seen = 0  # written by the claim loop only
        self._settles_failed = 0  # written by delivery tasks only
        self._settles_failed_seen = 0  # written by the claim loop only

    @property
    def state(self) -> DatabaseState:
        return self._state

    @property
    def ready(self) -> bool:
        """Claims succeed and no commit failed since the last one (for /readyz)."""
        return self._state in _READY and self._settles_failed == self._settles_failed_seen

    @property
    def needs_rejoin(self) -> bool:
        """Connections were lost (a claim's, or a delivery's commit): check, then wait."""
        return self._state is DatabaseState.LOST or self._commits_lost > self._commits_lost_seen

    # The claim loop's transitions.

    def claimed(self) -> bool:
        """A claim succeeded; True when that ends an outage (log it once)."""
        ended_outage = self._state in _OUTAGE
        self._state = DatabaseState.OK
        self._settles_failed_seen = self._settles_failed
        return ended_outage

    def failed(self, *, unavailable: bool) -> bool:
        """A claim or check failed; True when that starts an outage (log it once)."""
        started_outage = self._state not in _OUTAGE
        if unavailable or self._state is DatabaseState.LOST:
            self._state = DatabaseState.LOST
        else:
            self._state = DatabaseState.FAILING
        return started_outage

    def rejoining(self) -> None:
        """The database answers after a loss; the loop waits REJOIN_DELAY, then claims."""
        self._state = DatabaseState.REJOINING
        self._commits_lost_seen = self._commits_lost

    # Reports from delivery tasks.

    def report_commit_lost(self) -> None:
        """A batch's connection died before its commit: the others' likely did too."""
        self._commits_lost += 1

    def report_settle_failed(self) -> None:
        """Writing a batch's outcomes failed: not ready until a claim succeeds again."""
        self._settles_failed += 1


def stalled_after(poll_interval: float, hold_timeout: float) -> float:
    """How long the claim loop may go without a turn before /healthz calls it stalled.

    Idle, it turns at least once per poll interval. With every slot busy it waits for a
    batch to end, and a batch's locks last at most the hold timeout (the database ends
    the transaction then).
    """
    return max(STALLED_AFTER, 3 * poll_interval, hold_timeout)


class Heartbeat:
    """When the claim loop last came round; written by it alone, read by /healthz."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    def alive(self, within: float) -> bool:
        return time.monotonic() - self._last < within
