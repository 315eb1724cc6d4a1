"""Prometheus metrics. The only module importing prometheus_client.

No label carries a topic or a job id: their number is unbounded.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
               300, 3600)  # fmt: skip
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                    10, 30)  # fmt: skip
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class BatchHistogram(Collector):
    """A histogram fed a whole batch of observations in one call.

    prometheus_client's Histogram takes a lock and scans its buckets for every value:
    per published job, that was 7% of a replica's CPU in a drain. The daemon is one
    asyncio thread and /metrics is served on the same loop, so no lock is needed.
    """

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = sorted(buckets)
        self._counts = [0] * (len(self._bounds) + 1)  # the last one is +Inf
        self._sum = 0.0

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds = self._counts, self._bounds
        total = 0.0
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1  # the first bucket with le >= value
            total += value
        self._sum += total

    def collect(self) -> Iterator[Metric]:
        cumulative = list(itertools.accumulate(self._counts))
        labels = [*map(floatToGoString, self._bounds), "+Inf"]
        buckets = list(zip(labels, cumulative, strict=True))
        yield HistogramMetricFamily(
            self._name, self._documentation, buckets=buckets, sum_value=self._sum
        )


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.published = Counter(
            "jobpub_jobs_published", "Jobs published and marked processed.", registry=r
        )
        self.failures = Counter(
            "jobpub_publish_failures",
            "Publish attempts that failed, by reason (the job retries or goes dead).",
            ["reason"],
            registry=r,
        )
        self.dead = Counter(
            "jobpub_jobs_dead",
            "Jobs this replica marked dead: refused, or out of attempts.",
            registry=r,
        )
        self.released = Counter(
            "jobpub_jobs_released",
            "Claimed jobs given back unpublished (broker connection lost, shutdown).",
            registry=r,
        )
        self.lag = BatchHistogram(
            "jobpub_publish_lag_seconds",
            "Time from a job's fire_at to its publish (database clock).",
            LAG_BUCKETS,
        )
        r.register(self.lag)
        self.batch_size = Histogram(
            "jobpub_batch_size", "Jobs per claimed batch.", buckets=BATCH_BUCKETS, registry=r
        )
        self.claim_duration = Histogram(
            "jobpub_claim_duration_seconds",
            "Time to claim a batch.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.publish_duration = Histogram(
            "jobpub_publish_duration_seconds",
            "Time from a batch's first publish to its last ack.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.commit_duration = Histogram(
            "jobpub_commit_duration_seconds",
            "Time to mark a batch and commit.",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.jobs_due = Gauge(
            "jobpub_jobs_due", "Pending jobs whose fire_at has passed (sampled).", registry=r
        )
        self.jobs_scheduled = Gauge(
            "jobpub_jobs_scheduled", "Pending jobs whose fire_at is ahead (sampled).", registry=r
        )
        # Rows in the table now; named apart from jobpub_jobs_dead_total, which counts events.
        self.dead_jobs = Gauge(
            "jobpub_dead_jobs", "Dead rows currently in the jobs table (sampled).", registry=r
        )
        self.database_up = Gauge(
            "jobpub_database_up", "1 while the last database operation succeeded.", registry=r
        )
        self.pruned = Counter(
            "jobpub_jobs_pruned",
            "Finished rows this replica deleted under retention, by state (published, dead).",
            ["state"],
            registry=r,
        )
        self.broker_up = Gauge("jobpub_broker_up", "1 while connected to the broker.", registry=r)
        self.throttled = Counter(
            "jobpub_throttled_seconds",
            "Time the claim loop waited for its share of JOBPUB_RATE_LIMIT.",
            registry=r,
        )
        self.broker_disconnects = Counter(
            "jobpub_broker_disconnects", "Broker connections lost while running.", registry=r
        )
        # The delivery probe (JOBPUB_PROBE_TOPIC): only the elected subscriber observes.
        self.probe_latency = Histogram(
            "jobpub_probe_latency_seconds",
            "Delivery probe: from its fire_at to its arrival at the subscriber (database clock).",
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.probes_missing = Counter(
            "jobpub_probes_missing",
            "Delivery probes published (or refused) that did not arrive within the timeout.",
            registry=r,
        )
        self.probe_subscriber = Gauge(
            "jobpub_probe_subscriber",
            "1 while this replica is the elected probe subscriber and subscribed.",
            registry=r,
        )
        # Every replica: what the probe alerts need to tell "probe off" from "broken".
        self.probe_interval = Gauge(
            "jobpub_probe_interval_seconds",
            "JOBPUB_PROBE_INTERVAL while the delivery probe runs on this replica; 0: off.",
            registry=r,
        )
        self.probe_last_received = Gauge(
            "jobpub_probe_last_received_timestamp_seconds",
            "Unix time this replica last received a delivery probe (or its probe started).",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
