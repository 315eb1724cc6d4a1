"""How long a failing job survives, computed from the retry policy, and stated in the docs."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobpub import app
from jobpub.db.complete import RetryPolicy
from jobpub.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def default_policy() -> RetryPolicy:
    """The policy a replica builds from the default settings."""
    return app._retry_policy(Settings(database_url="postgresql://db/jobs"))


def test_the_old_defaults_killed_a_job_within_15_seconds() -> None:
    # Issue 13: 5 attempts from 1 s waited 1 + 2 + 4 + 8 s at most.
    assert RetryPolicy(max_attempts=5, backoff=1.0, backoff_max=300.0).lifetime() == (7.5, 15.0)


def test_the_delay_doubles_up_to_the_cap_without_overflow() -> None:
    policy = RetryPolicy(max_attempts=25, backoff=1.0, backoff_max=3600.0)
    assert [policy.ceiling(n) for n in (1, 2, 3, 12, 13)] == [1, 2, 4, 2048, 3600]
    assert policy.ceiling(2_000_000) == 3600


def test_the_defaults_keep_a_failing_job_for_hours() -> None:
    shortest, longest = default_policy().lifetime()
    assert shortest >= 6 * 3600
    assert longest <= 24 * 3600


@pytest.mark.parametrize("document", ["README.md", "docs/reliability.md"])
def test_the_docs_state_the_lifetime_of_the_defaults(document: str) -> None:
    shortest, longest = default_policy().lifetime()
    stated = f"between {shortest / 3600:.1f} and {longest / 3600:.1f} hours"
    text = " ".join((ROOT / document).read_text(encoding="utf-8").split())
    assert stated in text, f"{document} should say a job is dead {stated} after its first failure"
