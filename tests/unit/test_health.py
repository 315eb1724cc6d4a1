"""DatabaseHealth: the states the claim loop moves through, and reports from deliveries."""

from __future__ import annotations

from jobpub.health import DatabaseHealth, DatabaseState


def test_not_ready_until_the_first_claim() -> None:
    health = DatabaseHealth()
    assert health.state is DatabaseState.STARTING
    assert not health.ready
    assert not health.claimed(), "a first claim ends no outage"
    assert health.ready


def test_a_lost_connection_needs_a_rejoin_and_is_ready_while_rejoining() -> None:
    health = DatabaseHealth()
    health.claimed()
    assert health.failed(unavailable=True), "the first failure starts an outage"
    assert not health.failed(unavailable=True), "later ones do not: logged once"
    assert (health.state, health.ready, health.needs_rejoin) == (DatabaseState.LOST, False, True)
    health.rejoining()
    assert (health.ready, health.needs_rejoin) == (True, False)
    assert not health.claimed(), "the rejoin already announced the database"


def test_a_refused_claim_is_failing_without_a_rejoin() -> None:
    health = DatabaseHealth()
    assert health.failed(unavailable=False)
    assert (health.state, health.needs_rejoin) == (DatabaseState.FAILING, False)
    assert health.claimed(), "the outage ends"


def test_a_lost_commit_asks_for_a_rejoin_and_a_failed_settle_for_a_claim() -> None:
    health = DatabaseHealth()
    health.claimed()
    health.report_commit_lost()
    assert health.ready
    assert health.needs_rejoin
    health.rejoining()
    assert not health.needs_rejoin
    health.claimed()
    health.report_settle_failed()
    assert not health.ready
    health.claimed()
    assert health.ready
