"""Prometheus metrics. The only module importing prometheus_client.

No label carries a topic or a job id: their number is unbounded.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
               300, 3600)  # fmt: skip
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                    10, 30)  # fmt: skip
BATCH_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)

CONTENT_TYPE = CONTENT_TYPE_LATEST


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
            "jobpub_jobs_dead", "Jobs that went dead: refused, or out of attempts.", registry=r
        )
        self.released = Counter(
            "jobpub_jobs_released",
            "Claimed jobs given back unpublished (broker connection lost, shutdown).",
            registry=r,
        )
        self.lag = Histogram(
            "jobpub_publish_lag_seconds",
            "Time from a job's fire_at to its publish (database clock).",
            buckets=LAG_BUCKETS,
            registry=r,
        )
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
        self.jobs_dead_total = Gauge(
            "jobpub_jobs_dead_in_table", "Dead jobs in the table (sampled).", registry=r
        )
        self.database_up = Gauge(
            "jobpub_database_up", "1 while the last database operation succeeded.", registry=r
        )
        self.broker_up = Gauge("jobpub_broker_up", "1 while connected to the broker.", registry=r)
        self.broker_disconnects = Counter(
            "jobpub_broker_disconnects", "Broker connections lost while running.", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
