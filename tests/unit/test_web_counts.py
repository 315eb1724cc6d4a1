"""How /api/stats labels its counts and measures the publish rate (jobpub.db.web)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from jobpub.db.web import Count, count_of, publish_rate, published_estimate

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


def test_published_is_the_table_less_the_unsettled_never_negative() -> None:
    assert published_estimate(1_000, Count(100), Count(10)) == Count(890, "estimate")
    assert published_estimate(5, Count(100), Count(10)) == Count(0, "estimate")
    assert published_estimate(None, Count(0), Count(0)) == Count(0, "estimate")


def test_the_rate_is_over_the_whole_window_while_counting_did_not_stop() -> None:
    assert publish_rate(600, START, START, END, cap=1_000) == (2.0, 300.0)
    assert publish_rate(0, None, START, END, cap=1_000) == (0.0, 300.0)


def test_past_the_cap_the_rate_is_over_the_time_the_counted_rows_span() -> None:
    oldest_counted = END - timedelta(seconds=4)
    assert publish_rate(1_000, oldest_counted, START, END, cap=1_000) == (250.0, 4.0)
