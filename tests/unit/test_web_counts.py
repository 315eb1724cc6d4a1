"""How /api/stats and `jobpub stats` label their counts and measure the publish rate
(jobpub.db.stats)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobpub.db.stats import Count, count_of, publish_rate, settled_estimates

END = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
START = END - timedelta(minutes=5)


def test_a_count_below_the_cap_is_exact() -> None:
    assert count_of(9, estimate=500, cap=10) == Count(9, "exact")
    assert count_of(9, estimate=500, cap=10).exact


def test_past_the_cap_the_planners_estimate_is_given_and_labelled() -> None:
    counted = count_of(10, estimate=500, cap=10)
    assert counted == Count(500, "estimate")
    assert not counted.exact


def test_past_the_cap_without_a_larger_estimate_it_is_at_least_the_cap() -> None:
    # never analysed (no estimate), or statistics older than the rows: the cap is a floor
    assert count_of(10, estimate=None, cap=10) == Count(10, "at_least")
    assert count_of(10, estimate=3, cap=10) == Count(10, "at_least")


def test_published_is_the_table_less_the_other_states_never_negative() -> None:
    pending, dead = Count(100), Count(10)
    assert settled_estimates(1_000, 0.0, pending, dead) == (
        Count(0, "estimate"), Count(890, "estimate"),
    )  # fmt: skip
    assert settled_estimates(1_000, 0.05, pending, dead) == (
        Count(50, "estimate"), Count(840, "estimate"),
    )  # fmt: skip
    assert settled_estimates(5, 0.0, pending, dead) == (Count(0, "estimate"), Count(0, "estimate"))
    # never analysed: no size
    assert settled_estimates(None, 0.0, Count(0), Count(0)) == (
        Count(0, "estimate"), Count(0, "estimate"),
    )  # fmt: skip


def test_the_rate_is_over_the_whole_window_while_counting_did_not_stop() -> None:
    assert publish_rate(600, START, START, END, cap=1_000) == (2.0, 300.0)
    assert publish_rate(0, None, START, END, cap=1_000) == (0.0, 300.0)


def test_past_the_cap_the_rate_is_over_the_time_the_counted_rows_span() -> None:
    oldest_counted = END - timedelta(seconds=4)
    assert publish_rate(1_000, oldest_counted, START, END, cap=1_000) == (250.0, 4.0)
