"""The delivery probe's subscriber across real `jobpub run` processes: SIGKILL the
elected one and another takes the election, and probes are received again; none published
while nobody listened counts missing."""

from __future__ import annotations

import uuid
from pathlib import Path

from testbed.broker import Broker
from testbed.daemon import Replica, env_for
from testbed.sql import scalar
from testbed.waiting import wait_until


def test_killing_the_elected_subscriber_moves_the_election(
    db_url: str, broker: Broker, tmp_path: Path, replicas: list[Replica]
) -> None:
    env = env_for(
        db_url,
        broker.url,
        probe_topic=f"t{uuid.uuid4().hex[:10]}/probe",
        probe_interval="0.5",
        probe_timeout="2",
    )
    replicas.extend(Replica(env, tmp_path / f"replica-{index}.log") for index in range(2))

    def subscribed() -> list[Replica]:
        return [r for r in replicas if '"probe_subscribed"' in r.log_text()]

    wait_until(lambda: len(subscribed()) >= 1, 30, "a replica subscribed")
    wait_until(
        lambda: (
            scalar(db_url, "SELECT count(*) FROM delivery_probes WHERE received_at IS NOT NULL")
            >= 2
        ),
        30,
        "probes received",
    )
    assert len(subscribed()) == 1, "only the elected replica subscribes"
    elected = subscribed()[0]
    follower = next(r for r in replicas if r is not elected)

    elected.kill()  # its database session ends, and the advisory lock with it
    killed_at = scalar(db_url, "SELECT now()")
    wait_until(lambda: '"probe_subscribed"' in follower.log_text(), 30, "the follower elected")
    # Received after the kill, from past the timeout (2 s) on: by then the new
    # subscriber has swept every probe published around the kill at least once.
    wait_until(
        lambda: (
            scalar(
                db_url,
                "SELECT count(*) FROM delivery_probes WHERE received_at IS NOT NULL "
                "AND fire_at > %s + interval '4 s'",
                (killed_at,),
            )
            >= 2
        ),
        30,
        "probes received after the kill",
    )
    # A probe published while no replica was subscribed (the killed one's last, those of
    # the gap before the follower's SUBACK) was never going to arrive: not missing.
    assert scalar(db_url, "SELECT count(*) FROM delivery_probes WHERE missing_at IS NOT NULL") == 0
    assert follower.process.poll() is None
