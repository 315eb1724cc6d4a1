"""bench chaos fails the run when a scenario misses the Reliability targets."""

from __future__ import annotations

from bench.chaos import shortfalls
from bench.harness import Delivery, ScenarioResult


def scenario(name: str, *, lost: int = 0, twice: int = 0, **notes: object) -> ScenarioResult:
    delivery = Delivery(60_000, 60_000 - lost + twice, lost, twice, twice, 0, 1.0, 2.0, 3.0, 4.0)
    return ScenarioResult(name, 4, 60_000, 0, delivery, notes=dict(notes))


def fault(name: str, *, per_fault: float = 0.0, recovery: float = 1.0, **counts: int
          ) -> ScenarioResult:  # fmt: skip
    return scenario(name, faults=1, published_twice_per_fault=per_fault,
                    recovery_s=[0.3, recovery], **counts)  # fmt: skip


def test_a_run_within_every_target_passes() -> None:
    assert shortfalls([fault("chaos-replica-kills", per_fault=100, recovery=5.0),
                       scenario("chaos-bystander-held")]) == []  # fmt: skip


def test_each_missed_target_is_named() -> None:
    missed = shortfalls([
        fault("chaos-replica-kills", per_fault=100.5),
        fault("chaos-broker-kill", lost=7, lost_after_broker_ack=7),
        fault("chaos-pg-restart", recovery=5.2),
        scenario("chaos-bystander-held", twice=3),
    ])  # fmt: skip
    assert missed == [
        "chaos-replica-kills: 100.5 published twice per fault (at most 100)",
        "chaos-broker-kill: 7 jobs lost, 7 of them acked by the broker",
        "chaos-pg-restart: recovery 5.2 s (at most 5 s)",
        "chaos-bystander-held: 3 published twice",
    ]
