"""`python -m bench scale --cases`: what each case name means."""

from __future__ import annotations

import pytest

from bench.scale import DEFAULT_CASES, ScaleCase, histogram_quantile, parse_cases


def test_cases_name_their_rows_and_empty_always_comes_first() -> None:
    assert parse_cases("processed-1m,scheduled-500k,empty") == [
        ScaleCase("empty"),
        ScaleCase("processed-1m", processed=1_000_000),
        ScaleCase("scheduled-500k", scheduled=500_000),
    ]


def test_the_empty_table_is_measured_even_when_not_asked_for() -> None:
    assert parse_cases("scheduled-10m") == [
        ScaleCase("empty"),
        ScaleCase("scheduled-10m", scheduled=10_000_000),
    ]


def test_case_names_are_read_loosely_and_each_case_runs_once() -> None:
    cases = parse_cases(" Processed-2M , processed-2m,,")
    assert cases == [ScaleCase("empty"), ScaleCase("processed-2m", processed=2_000_000)]


def test_the_default_covers_the_issue_cases() -> None:
    names = [case.name for case in parse_cases(DEFAULT_CASES)]
    assert names == ["empty", "processed-1m", "processed-10m", "scheduled-1m", "scheduled-10m"]
    assert parse_cases("processed-10m")[1].background == 10_000_000


@pytest.mark.parametrize("text", ["full", "processed", "processed-1g", "scheduled-0m", "done-1m"])
def test_unknown_cases_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="scale case"):
        parse_cases(text)


def test_claim_quantiles_come_from_the_histogram_buckets() -> None:
    buckets = {0.001: 50.0, 0.0025: 90.0, 0.005: 100.0, float("inf"): 100.0}
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.001)
    assert histogram_quantile(buckets, 0.7) == pytest.approx(0.00175)
    assert histogram_quantile(buckets, 0.99) == pytest.approx(0.00475)
    assert histogram_quantile({}, 0.5) != histogram_quantile({}, 0.5)  # NaN: no claims
