"""`python -m bench web-speed`: the seeded mix and the percentiles it reports."""

from __future__ import annotations

import pytest

from bench.web_speed import percentile, plan


def test_ten_million_rows_are_mostly_published_with_pending_dead_and_expired() -> None:
    mix = plan(10_000_000)
    assert mix.published + mix.expired + mix.dead + mix.pending == 10_000_000
    assert (mix.ahead, mix.due) == (300_000, 1_000)
    assert mix.dead == mix.settled // 200
    assert mix.expired == pytest.approx(mix.settled / 50, abs=1)
    assert mix.published > 0.9 * mix.rows


def test_the_kinds_match_what_the_seed_statement_picks_by_id() -> None:
    # the seed: dead when id % dead_every == 0, else expired when id % expired_every == 1
    mix = plan(10_000)
    ids = range(1, mix.settled + 1)
    assert sum(1 for g in ids if g % mix.dead_every == 0) == mix.dead
    assert sum(1 for g in ids if g % mix.dead_every and g % mix.expired_every == 1) == (mix.expired)


def test_a_table_too_small_to_hold_the_mix_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1,000 rows"):
        plan(999)


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile([7.0], 95) == 7.0
    assert percentile([3.0, 1.0, 2.0], 100) == 3.0
