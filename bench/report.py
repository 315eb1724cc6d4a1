"""The results as a Markdown table and a PNG chart."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from bench.chaos import MAX_PUBLISHED_TWICE_PER_FAULT, MAX_RECOVERY_S
from bench.harness import ScenarioResult

COLUMNS = ("scenario", "replicas", "jobs", "jobs/s", "lost", "dup", "early", "lag p50 ms",
           "p95", "p99", "max", "peak RSS MiB", "CPU %")  # fmt: skip


def render_table(results: list[ScenarioResult]) -> str:
    rows = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        d = r.delivery
        rss = "/".join(f"{u.peak_rss_mib:.0f}" for u in r.usage) or "-"
        cpu = "/".join(f"{u.cpu_percent:.1f}" for u in r.usage) or "-"
        cells = [r.name, str(r.replicas or "-"), f"{r.jobs:,}",
                 f"{r.jobs_per_s:,}" if r.jobs_per_s else "-"]  # fmt: skip
        if d is None:
            cells += ["-"] * 7
        else:
            cells += [str(d.lost), str(d.duplicated), str(d.early), f"{d.lag_p50_ms:g}",
                      f"{d.lag_p95_ms:g}", f"{d.lag_p99_ms:g}", f"{d.lag_max_ms:g}"]  # fmt: skip
        cells += [rss, cpu]
        rows.append("| " + " | ".join(cells) + " |")
    notes = [f"- {r.name}: " + ", ".join(f"{k} {v}" for k, v in r.notes.items())
             for r in results if r.notes]  # fmt: skip
    return "\n".join(rows + (["", *notes] if notes else []))


def render_chart(results: list[ScenarioResult], path: Path) -> None:
    rated = [r for r in results if r.jobs_per_s and r.name not in ("on-time", "idle")]
    timed = [r for r in results if r.name == "on-time" and r.delivery]
    figure, axes = plt.subplots(1, 2 if timed else 1, figsize=(12 if timed else 7, 4.5),
                                squeeze=False)  # fmt: skip
    left = axes[0][0]
    left.barh([r.name for r in rated], [r.jobs_per_s for r in rated], color="#4878a8")
    left.set_xlabel("jobs per second (higher is better)")
    left.set_title("Throughput, QoS 1, this machine")
    left.invert_yaxis()
    for index, r in enumerate(rated):
        left.text(r.jobs_per_s, index, f" {r.jobs_per_s:,}", va="center", fontsize=8)
    if timed:
        d = timed[0].delivery
        if d is None:
            raise ValueError("on-time result without delivery figures")
        right = axes[0][1]
        labels = ["p50", "p95", "p99", "max"]
        right.bar(labels, [d.lag_p50_ms, d.lag_p95_ms, d.lag_p99_ms, d.lag_max_ms],
                  color="#6a9f58")  # fmt: skip
        right.axhline(10, color="#c44e52", linestyle="--", linewidth=1, label="p99 target 10 ms")
        right.set_ylabel("ms after fire_at")
        right.set_title(f"On time: {timed[0].jobs:,} jobs at "
                        f"{timed[0].notes.get('rate_per_s', '?')}/s, {d.early} early")  # fmt: skip
        right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def render_chaos_chart(results: list[ScenarioResult], path: Path) -> None:
    """Duplicates per fault and recovery time per chaos scenario, against the targets."""
    faults = [r for r in results if "faults" in r.notes]
    names = [r.name.removeprefix("chaos-") for r in faults]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.barh(names, [r.notes["published_twice_per_fault"] for r in faults], color="#4878a8")
    left.axvline(MAX_PUBLISHED_TWICE_PER_FAULT, color="#c44e52", linestyle="--", linewidth=1,
                 label=f"target ≤ {MAX_PUBLISHED_TWICE_PER_FAULT}")  # fmt: skip
    left.set_xlabel("jobs published twice per fault during the stream")
    left.set_title("Duplicates (0 lost in every scenario)" if all(
        r.delivery and r.delivery.lost == 0 for r in faults) else "Duplicates")  # fmt: skip
    left.invert_yaxis()
    left.legend()
    right.barh(names, [max(r.notes["recovery_s"]) for r in faults], color="#6a9f58")
    right.axvline(MAX_RECOVERY_S, color="#c44e52", linestyle="--", linewidth=1,
                  label=f"target ≤ {MAX_RECOVERY_S:g} s")  # fmt: skip
    right.set_xlabel("seconds until all replicas ready and marking again (worst event)")
    right.set_title("Recovery after the fault ends")
    right.invert_yaxis()
    right.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
