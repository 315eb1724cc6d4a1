"""The soak's samples and its verdicts: pure functions of the samples, no I/O.

The targets are stated for a 30-minute run (issue 16): each replica's RSS over the last
10 minutes within ±3 MiB of its RSS at minute 5; claim p99 and lag p99 flat; the table's
size reaching a plateau; nothing lost, early or duplicated. A shorter run scales the
RSS rule's times in proportion (minute 5 of 30 is a sixth of the run, the last 10
minutes its last third), and the report says so.

"Flat" and "plateau" compare the run's last third with its second third (the first
third is warm-up: the table fills until retention starts deleting):

- flat: the median of the per-window p99s over the last third is at most
  FLAT_RATIO x the second third's median + FLAT_SLACK_MS (the slack keeps a 1 ms p99
  from failing on a fraction of a millisecond). Getting faster is flat too.
- plateau: the table's largest size over the last third is at most PLATEAU_GROWTH
  above its largest size over the second third (largest: retention deletes in rounds,
  so the size saws between them; its peaks are what would grow).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

TARGET_MINUTES = 30.0  # the run the targets are stated for
RSS_REFERENCE_MINUTE = 5.0  # of TARGET_MINUTES
RSS_WINDOW_MINUTES = 10.0  # the last ones of TARGET_MINUTES
RSS_TOLERANCE_MIB = 3.0
FLAT_RATIO = 1.25
FLAT_SLACK_MS = 1.0
PLATEAU_GROWTH = 0.10

# The rows' schedule: the producer inserts one batch per tick; within a batch a row is
# due AHEAD_STEP_S x (id % AHEAD_STEPS) after the batch's insert (0 to 1.9 s ahead), so
# a twentieth of the rows is due the moment it is inserted.
TICK_S = 0.1
AHEAD_STEPS = 20
AHEAD_STEP_S = 0.1


@dataclass(frozen=True)
class Schedule:
    """Which rows each batch holds, and when each row falls due."""

    batch_size: int

    def batch_of(self, job_id: int) -> int:
        """The batch (0-based) that inserted `job_id`; ids start at 1."""
        return (job_id - 1) // self.batch_size

    def ids_of(self, batch: int) -> tuple[int, int]:
        """The first and last id of `batch`."""
        first = batch * self.batch_size + 1
        return first, first + self.batch_size - 1

    @staticmethod
    def fire_at(job_id: int, batch_inserted_at: float) -> float:
        return batch_inserted_at + (job_id % AHEAD_STEPS) * AHEAD_STEP_S


def batch_size_for(rate: int) -> int:
    """Rows per tick for `rate` jobs/s (the rate actually run is this x 10)."""
    if rate < 1 / TICK_S:
        raise ValueError(f"--rate {rate}: at least {1 / TICK_S:g} jobs/s (one row per tick)")
    return round(rate * TICK_S)


@dataclass
class Sample:
    """One 10-second window, ending `at_s` seconds into the run."""

    at_s: float
    rss_mib: list[float]  # per replica, at the window's end (VmRSS); NaN for one gone
    claim_p99_ms: float  # over the window, every replica's claims (NaN: no claim)
    lag_p99_ms: float  # fire_at to the subscriber's first copy, jobs first seen this window
    lag_max_ms: float
    received: int  # messages the subscriber got this window, copies included
    published: int  # replicas' jobpub_jobs_published_total, summed, so far
    produced: int  # rows inserted so far
    pruned: int  # replicas' pruned rows (published), summed, so far
    table_bytes: int  # pg_total_relation_size('jobs'): heap, indexes and TOAST
    live_rows: int  # the statistics' n_live_tup and n_dead_tup (count(*) would scan)
    dead_rows: int
    vacuums: int  # of the jobs table since the run began
    load_1m: float


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    measured: str
    target: str


def when(seconds: float) -> str:
    """A moment of the run as the report writes it: seconds below 2 minutes."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.3g} min"


def scaled(minutes: float) -> bool:
    """Whether the RSS rule's times are scaled down for this run."""
    return minutes < TARGET_MINUTES


def rss_times(run_s: float) -> tuple[float, float]:
    """The reference moment and the start of the window the RSS rule compares with it."""
    # Multiplied before divided, so a 30-minute run's moments come out exact (1200.0).
    reference = run_s * RSS_REFERENCE_MINUTE / TARGET_MINUTES
    return reference, run_s * (TARGET_MINUTES - RSS_WINDOW_MINUTES) / TARGET_MINUTES


def thirds(samples: Sequence[Sample], run_s: float) -> tuple[list[Sample], list[Sample]]:
    """The samples of the run's second third and of its last third."""
    second = [s for s in samples if run_s / 3 < s.at_s <= 2 * run_s / 3]
    last = [s for s in samples if 2 * run_s / 3 < s.at_s <= run_s]
    return second, last


def nearest(samples: Sequence[Sample], at_s: float) -> Sample:
    return min(samples, key=lambda s: abs(s.at_s - at_s))


def _median(values: Sequence[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return statistics.median(known) if known else float("nan")


def rss_verdicts(samples: Sequence[Sample], run_s: float) -> list[Verdict]:
    """Per replica: every RSS in the window within the tolerance of the reference."""
    if not samples:
        return [Verdict("RSS flat", False, "no samples", "")]
    reference_s, window_s = rss_times(run_s)
    reference = nearest(samples, reference_s)
    window = [s for s in samples if s.at_s >= window_s]
    target = (
        f"within ±{RSS_TOLERANCE_MIB:g} MiB of {when(reference.at_s)}, from {when(window_s)} on"
    )
    verdicts = []
    for index, base in enumerate(reference.rss_mib):
        values = [s.rss_mib[index] for s in window]
        name = f"RSS flat, replica {index + 1}"
        if not values or math.isnan(base) or any(math.isnan(v) for v in values):
            verdicts.append(Verdict(name, False, "replica gone or no samples", target))
            continue
        worst = max(values, key=lambda v: abs(v - base))
        passed = abs(worst - base) <= RSS_TOLERANCE_MIB
        measured = (
            f"{base:.1f} MiB, then {min(values):.1f} to {max(values):.1f} ({worst - base:+.1f})"
        )
        verdicts.append(Verdict(name, passed, measured, target))
    return verdicts


def flat_verdict(name: str, second: Sequence[float], last: Sequence[float]) -> Verdict:
    """Last third's median p99 against the second third's (see the module's docstring)."""
    target = f"last-third median ≤ {FLAT_RATIO:g} x second-third median + {FLAT_SLACK_MS:g} ms"
    before, after = _median(second), _median(last)
    if math.isnan(before) or math.isnan(after):
        return Verdict(name, False, "not enough windows with data", target)
    bound = FLAT_RATIO * before + FLAT_SLACK_MS
    return Verdict(name, after <= bound, f"{before:.2f} → {after:.2f} ms (bound {bound:.2f})",
                   target)  # fmt: skip


def plateau_verdict(second: Sequence[int], last: Sequence[int]) -> Verdict:
    target = f"last-third peak ≤ second-third peak + {PLATEAU_GROWTH:.0%}"
    if not second or not last:
        return Verdict("table size plateau", False, "not enough samples", target)
    before, after = max(second), max(last)
    growth = after / before - 1 if before else float("inf")
    measured = f"{before / 2**20:.1f} → {after / 2**20:.1f} MiB ({growth:+.1%})"
    return Verdict("table size plateau", growth <= PLATEAU_GROWTH, measured, target)


def count_verdict(name: str, count: int) -> Verdict:
    return Verdict(name, count == 0, str(count), "0")


def verdicts(samples: Sequence[Sample], run_s: float, *, lost: int, early: int,
             duplicated: int) -> list[Verdict]:  # fmt: skip
    second, last = thirds(samples, run_s)
    return [
        *rss_verdicts(samples, run_s),
        flat_verdict(
            "claim p99 flat", [s.claim_p99_ms for s in second], [s.claim_p99_ms for s in last]
        ),
        flat_verdict("lag p99 flat", [s.lag_p99_ms for s in second], [s.lag_p99_ms for s in last]),
        plateau_verdict([s.table_bytes for s in second], [s.table_bytes for s in last]),
        count_verdict("lost", lost),
        count_verdict("early", early),
        count_verdict("duplicates", duplicated),
    ]


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (as harness.check_delivery takes it); NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
