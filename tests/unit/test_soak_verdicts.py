"""`python -m bench soak`: its windows, schedule and verdicts, from made-up samples."""

from __future__ import annotations

import collections
import math

import pytest

from bench.soak import SoakConfig, counted_percentile, parse_metrics
from bench.soak_verdicts import (
    Sample,
    Schedule,
    batch_size_for,
    flat_verdict,
    percentile,
    plateau_verdict,
    rss_times,
    rss_verdicts,
    scaled,
    thirds,
    verdicts,
    when,
)

NAN = float("nan")
RUN_S = 1800.0  # the 30-minute soak the targets are stated for


def sample(at_s: float, *, rss: tuple[float, ...] = (50.0, 50.0), claim: float = 2.0,
           lag: float = 3.0, table: int = 100 * 2**20) -> Sample:  # fmt: skip
    return Sample(at_s=at_s, rss_mib=list(rss), claim_p99_ms=claim, lag_p99_ms=lag,
                  lag_max_ms=lag * 2, received=1000, published=0, produced=0, pruned=0,
                  table_bytes=table, live_rows=0, dead_rows=0, vacuums=0, load_1m=1.0)  # fmt: skip


def steady(run_s: float = RUN_S, **figures: object) -> list[Sample]:
    return [sample(10.0 * i, **figures) for i in range(1, int(run_s // 10) + 1)]  # type: ignore[arg-type]


def by_name(samples: list[Sample], run_s: float = RUN_S) -> dict[str, bool]:
    return {v.name: v.passed for v in verdicts(samples, run_s, lost=0, early=0, duplicated=0)}


def test_a_steady_run_meets_every_target() -> None:
    assert all(by_name(steady()).values())


def test_the_rss_rule_compares_the_last_10_minutes_with_minute_5_of_30() -> None:
    assert rss_times(1800.0) == (300.0, 1200.0)
    assert not scaled(30)


def test_a_shorter_run_scales_the_rss_rule_in_proportion() -> None:
    assert rss_times(180.0) == pytest.approx((30.0, 120.0))
    assert scaled(3)
    assert not scaled(45)


def test_rss_growing_by_more_than_3_mib_after_minute_5_misses_for_that_replica_only() -> None:
    samples = steady()
    for s in samples:
        if s.at_s >= 1700:
            s.rss_mib[1] = 53.5
    result = {v.name: v for v in rss_verdicts(samples, RUN_S)}
    assert result["RSS flat, replica 1"].passed
    assert not result["RSS flat, replica 2"].passed
    assert "+3.5" in result["RSS flat, replica 2"].measured


def test_rss_within_3_mib_of_minute_5_either_way_is_flat() -> None:
    samples = steady()
    for s in samples:
        if s.at_s >= 1200:
            s.rss_mib[0] = 47.0 if s.at_s % 20 else 53.0
    assert all(v.passed for v in rss_verdicts(samples, RUN_S))


def test_rss_growth_before_minute_5_is_start_up_not_a_leak() -> None:
    samples = steady()
    for s in samples:
        if s.at_s < 300:
            s.rss_mib[0] = 30.0
    assert all(v.passed for v in rss_verdicts(samples, RUN_S))


def test_growth_between_minute_5_and_the_window_is_judged_against_minute_5() -> None:
    samples = steady()
    for s in samples:
        if s.at_s > 600:
            s.rss_mib[0] = 54.0  # grew in minutes 10-20, then stayed there
    assert not rss_verdicts(samples, RUN_S)[0].passed


def test_a_replica_that_died_misses_its_rss_target() -> None:
    samples = steady()
    samples[-1].rss_mib[0] = NAN
    verdict = rss_verdicts(samples, RUN_S)[0]
    assert not verdict.passed
    assert "gone" in verdict.measured


def test_thirds_split_the_samples_by_time_leaving_out_the_warm_up() -> None:
    second, last = thirds(steady(180.0), 180.0)
    assert [s.at_s for s in second] == [70.0, 80.0, 90.0, 100.0, 110.0, 120.0]
    assert [s.at_s for s in last] == [130.0, 140.0, 150.0, 160.0, 170.0, 180.0]


def test_a_p99_growing_by_more_than_the_bound_is_not_flat() -> None:
    assert flat_verdict("lag", [4.0, 4.0, 4.0], [4.0, 6.5, 6.5]).passed is False
    assert flat_verdict("lag", [4.0, 4.0, 4.0], [4.0, 6.0, 6.0]).passed  # 1.25 x 4 + 1


def test_flat_compares_medians_so_one_slow_window_does_not_decide() -> None:
    assert flat_verdict("claim", [2.0, 2.0, 2.0], [2.0, 80.0, 2.0]).passed


def test_a_p99_falling_is_flat() -> None:
    assert flat_verdict("claim", [10.0, 10.0], [1.0, 1.0]).passed


def test_the_slack_keeps_sub_millisecond_noise_from_failing() -> None:
    assert flat_verdict("claim", [0.4, 0.4], [1.2, 1.2]).passed


def test_windows_without_claims_are_left_out_and_none_at_all_misses() -> None:
    assert flat_verdict("claim", [2.0, NAN], [NAN, 2.2]).passed
    assert not flat_verdict("claim", [NAN, NAN], [2.0]).passed


def test_a_table_still_growing_in_the_last_third_has_no_plateau() -> None:
    mib = 2**20
    assert plateau_verdict([100 * mib, 105 * mib], [108 * mib, 110 * mib]).passed
    verdict = plateau_verdict([100 * mib, 105 * mib], [110 * mib, 116 * mib])
    assert not verdict.passed
    assert "+10.5%" in verdict.measured


def test_plateau_compares_peaks_so_the_saw_of_pruning_rounds_does_not_decide() -> None:
    mib = 2**20
    assert plateau_verdict([60 * mib, 100 * mib, 60 * mib], [100 * mib, 60 * mib]).passed


def test_any_lost_early_or_duplicated_job_misses() -> None:
    for counts in ({"lost": 1, "early": 0, "duplicated": 0},
                   {"lost": 0, "early": 1, "duplicated": 0},
                   {"lost": 0, "early": 0, "duplicated": 1}):  # fmt: skip
        checked = verdicts(steady(), RUN_S, **counts)
        assert [v.name for v in checked if not v.passed] == [
            {"lost": "lost", "early": "early", "duplicated": "duplicates"}[k]
            for k, n in counts.items() if n
        ]  # fmt: skip


def test_a_run_too_short_for_thirds_misses_rather_than_passes() -> None:
    results = by_name([sample(10.0)], 30.0)
    assert not results["claim p99 flat"]
    assert not results["table size plateau"]


def test_each_batch_holds_its_ids_and_every_row_falls_due_within_two_seconds() -> None:
    schedule = Schedule(batch_size_for(2000))
    assert schedule.batch_size == 200
    assert schedule.ids_of(0) == (1, 200)
    assert schedule.ids_of(3) == (601, 800)
    assert {schedule.batch_of(i) for i in range(601, 801)} == {3}
    lead = [Schedule.fire_at(i, 100.0) - 100.0 for i in range(1, 201)]
    assert min(lead) == 0.0
    assert max(lead) == pytest.approx(1.9)


def test_a_rate_below_one_row_per_tick_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 10 jobs/s"):
        batch_size_for(5)


def test_the_default_retention_is_two_minutes_or_a_sixth_of_a_short_run() -> None:
    assert SoakConfig.default_retention(30) == 120.0
    assert SoakConfig.default_retention(3) == 30.0


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([float(v) for v in range(1, 101)], 0.99) == 100.0
    assert math.isnan(percentile([], 0.99))
    counts = collections.Counter({10: 98, 25: 1, 400: 1})  # tenths of a millisecond
    assert counted_percentile(counts, 0.50) == 1.0
    assert counted_percentile(counts, 0.99) == 40.0
    assert math.isnan(counted_percentile(collections.Counter(), 0.5))


def test_one_scrape_gives_published_pruned_and_the_claim_histogram() -> None:
    figures = parse_metrics([
        "# HELP jobpub_jobs_published_total Jobs published and marked processed.",
        "jobpub_jobs_published_total 1234.0",
        'jobpub_jobs_pruned_total{state="published"} 500.0',
        'jobpub_jobs_pruned_total{state="dead"} 7.0',
        'jobpub_claim_duration_seconds_bucket{le="0.001"} 3.0',
        'jobpub_claim_duration_seconds_bucket{le="+Inf"} 4.0',
        "jobpub_claim_duration_seconds_count 4.0",
    ])  # fmt: skip
    assert (figures.published, figures.pruned) == (1234.0, 500.0)
    assert figures.claim_buckets == {0.001: 3.0, float("inf"): 4.0}


def test_moments_read_as_seconds_or_minutes() -> None:
    assert when(30.0) == "30 s"
    assert when(300.0) == "5 min"
    assert when(1200.0) == "20 min"
