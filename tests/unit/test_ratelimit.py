"""The rate budget: the token bucket on a fake clock, and the relay claiming by it."""

from __future__ import annotations

import pytest

from jobpub.metrics import Metrics
from jobpub.ratelimit import TokenBucket
from tests.unit.test_relay import FakePublisher, FakeSource, config, job, relay_of, run_until


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_claim_takes_a_tenth_of_a_second_of_the_rate_and_the_bucket_saves_a_quarter() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock)
    assert bucket.take(250) == 100  # starts full (250 saved): a claim is 0.1 s worth
    assert bucket.take(250) == 100
    assert bucket.take(250) == 0  # 50 left: wait for the rest of a claim's worth
    assert bucket.delay(250) == pytest.approx(0.05)
    clock.now += 0.05
    assert bucket.take(250) == 100
    assert bucket.take(10) == 0
    clock.now += 0.01
    assert bucket.take(10) == 10  # a smaller claim is granted as soon as it is covered


def test_a_late_claim_loses_nothing_within_the_saved_quarter_second() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock)
    assert bucket.take(250) + bucket.take(250) == 200
    clock.now += 0.2  # the loop came back late: twice a claim's worth came in meanwhile
    assert [bucket.take(250) for _ in range(3)] == [100, 100, 0]


def test_over_a_long_window_the_bucket_grants_its_rate_and_saves_no_more_than_a_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(250, clock)
    granted = bucket.take(1000)
    for _ in range(1000):  # 10 s in steps of 10 ms, claiming whenever allowed
        clock.now += 0.01
        granted += bucket.take(1000)
    assert 2500 <= granted <= 2500 + 62.5  # the rate, plus the burst it started with
    clock.now += 3600  # an idle hour saves a quarter second, not an hour of tokens
    assert sum(bucket.take(1000) for _ in range(10)) == 50  # 62.5 saved, in claims of 25


def test_a_new_share_applies_at_once_and_unused_tokens_come_back() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, clock)
    bucket.set_rate(250)  # three more replicas joined
    assert [bucket.take(1000) for _ in range(3)] == [25, 25, 0]  # saved: capped at 62.5
    bucket.give_back(20)  # the last claim found 5 rows
    assert bucket.take(20) == 20


def test_a_tiny_rate_still_claims_one_row_at_a_time() -> None:
    clock = FakeClock()
    bucket = TokenBucket(0.5, clock)
    assert bucket.take(250) == 1
    assert bucket.delay(250) == pytest.approx(2.0)


async def test_the_relay_claims_what_the_budget_allows_and_counts_the_wait() -> None:
    rows = [job(i, 0) for i in range(1, 1001)]
    source = FakeSource()
    requested: list[int] = []
    claim = source.claim

    async def sized_claim(limit: int | None = None) -> object:
        assert limit is not None
        requested.append(limit)
        batch = await claim(limit)
        batch.jobs = rows[: min(limit, len(rows))]
        del rows[: len(batch.jobs)]
        return batch

    source.claim = sized_claim  # type: ignore[method-assign,assignment]
    publisher, metrics = FakePublisher(), Metrics()
    relay = relay_of(source, publisher, metrics, config(batch_size=250))
    relay._budget = TokenBucket(2000)  # 200 rows per claim, every 0.1 s; 500 saved
    await run_until(relay, lambda: len(publisher.sent) >= 1000, "1,000 rows published")
    assert requested[:5] == [200] * 5  # each claim is the budget's, not the batch size
    throttled = metrics.registry.get_sample_value("jobpub_throttled_seconds_total")
    assert throttled is not None
    # 1,000 rows at 2,000/s with 500 saved at the start: at least 0.25 s of waiting.
    assert throttled >= 0.2
