"""JOBPUB_RETENTION and JOBPUB_DEAD_RETENTION: seconds, 0 keeps rows forever."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobpub import app
from jobpub.settings import describe_errors
from testbed.daemon import make_settings

URLS = ("postgresql://u@db/jobs", "mqtt://broker")


def test_defaults_keep_published_rows_a_week_and_dead_ones_thirty_days() -> None:
    config = app._retention_config(make_settings(*URLS))
    assert (config.published, config.dead) == (7 * 86400, 30 * 86400)
    assert config.enabled


def test_zero_turns_each_off_and_both_zero_turn_the_pruner_off() -> None:
    only_dead = app._retention_config(make_settings(*URLS, retention="0"))
    assert (only_dead.published, only_dead.dead, only_dead.enabled) == (0, 30 * 86400, True)
    off = app._retention_config(make_settings(*URLS, retention="0", dead_retention="0"))
    assert not off.enabled


def test_seconds_as_a_number_and_the_pooling_mode_reach_the_pruner() -> None:
    config = app._retention_config(
        make_settings(*URLS, retention="3600.5", transaction_pooling=True)
    )
    assert (config.published, config.transaction_pooling) == (3600.5, True)


@pytest.mark.parametrize("value", ["-1", "7d", "forever"])
def test_anything_but_seconds_is_refused_with_the_variable_named(value: str) -> None:
    with pytest.raises(ValidationError) as refused:
        make_settings(*URLS, dead_retention=value)
    assert describe_errors(refused.value).startswith("invalid settings: JOBPUB_DEAD_RETENTION")
