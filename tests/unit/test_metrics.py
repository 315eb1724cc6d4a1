"""Metrics our own code computes (the rest is prometheus_client's)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from jobpub.metrics import BatchHistogram, Metrics


def test_batch_histogram_buckets_are_cumulative_and_inclusive() -> None:
    registry = CollectorRegistry()
    histogram = BatchHistogram("t_lag_seconds", "test", (0.01, 0.1, 1.0))
    registry.register(histogram)
    histogram.observe_many([0.005, 0.01, 0.05])
    histogram.observe_many([0.5, 7.0])

    def bucket(le: str) -> float | None:
        return registry.get_sample_value("t_lag_seconds_bucket", {"le": le})

    assert bucket("0.01") == 2  # le: a value on the bound counts in that bucket
    assert bucket("0.1") == 3
    assert bucket("1.0") == 4
    assert bucket("+Inf") == 5
    assert registry.get_sample_value("t_lag_seconds_count") == 5
    assert registry.get_sample_value("t_lag_seconds_sum") == pytest.approx(7.565)


def test_lag_is_exposed_in_the_text_format() -> None:
    metrics = Metrics()
    metrics.lag.observe_many([0.002])
    text = metrics.render().decode()
    assert 'jobpub_publish_lag_seconds_bucket{le="0.0025"} 1.0' in text
    assert "jobpub_publish_lag_seconds_count 1.0" in text


def test_dead_rows_and_dead_events_are_told_apart_by_name() -> None:
    metrics = Metrics()
    metrics.dead.inc()
    metrics.dead_jobs.set(3)
    text = metrics.render().decode()
    assert "# TYPE jobpub_jobs_dead_total counter" in text
    assert "jobpub_jobs_dead_total 1.0" in text
    assert "# TYPE jobpub_dead_jobs gauge" in text
    assert "# HELP jobpub_dead_jobs Dead rows currently in the jobs table (sampled)." in text
    assert "jobpub_dead_jobs 3.0" in text
    assert "dead_in_table" not in text
