"""The soak's page section, JSON and chart over time."""

from __future__ import annotations

import dataclasses
import itertools
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from bench.soak import SAMPLE_S, SoakRun
from bench.soak_verdicts import (
    FLAT_RATIO,
    FLAT_SLACK_MS,
    PLATEAU_GROWTH,
    RSS_TOLERANCE_MIB,
    TICK_S,
    rss_times,
    scaled,
    when,
)

MINUTE_EVERY = round(60 / SAMPLE_S)  # one sample a minute in the page's table


def as_json(run: SoakRun) -> dict[str, Any]:
    return {
        "config": dataclasses.asdict(run.config),
        "seconds": run.seconds,
        "passed": run.passed,
        "verdicts": [dataclasses.asdict(v) for v in run.verdicts],
        "samples": [dataclasses.asdict(s) for s in run.samples],
    }


def render_section(run: SoakRun, *, smoke: bool, postgres: str) -> str:
    """Verdicts, the rules behind them, and a sample a minute."""
    config = run.config
    reference_s, window_s = rss_times(config.run_s)
    lines = []
    if smoke:
        lines += [f"**Smoke run** ({config.minutes:g} minutes): it shows the bench works, "
                  "not how jobpub soaks. The targets are for 30 minutes on a quiet machine.",
                  ""]  # fmt: skip
    lines += [
        f"{config.replicas} replicas, {run.result.notes['rate_per_s']:,} jobs/s for "
        f"{config.minutes:g} min, JOBPUB_RETENTION={config.retention_s:g} s; PostgreSQL: "
        f"{postgres}, autovacuum {run.result.notes['autovacuum']}; setup "
        f"{run.seconds['setup']:g} s, settling after the stream {run.seconds['settle']:g} s. "
        f"The producer fell at most {run.result.notes['producer_behind_max_s']} s behind "
        f"its clock ({run.result.notes['producer_late_batches']:,} of "
        f"{round(config.run_s / TICK_S):,} batches more than a tick late).",
        "",
        *(
            []
            if run.result.notes["autovacuum"] == "on"
            else [
                "**Autovacuum is off on this server**: nothing reclaims the dead rows, so the "
                "table cannot reach a plateau whatever jobpub does. Run with `--postgres own`.",
                "",
            ]
        ),
        f"**{'Every target met' if run.passed else 'Targets missed'}.**",
        "",
        "| check | measured | target | |",
        "|---|---|---|---|",
    ]
    for verdict in run.verdicts:
        mark = "met" if verdict.passed else "**missed**"
        lines.append(f"| {verdict.name} | {verdict.measured} | {verdict.target} | {mark} |")
    lines += [
        "",
        "Rules: the RSS of each replica (VmRSS, sampled every 10 s) from "
        f"{when(window_s)} to the end stays within ±{RSS_TOLERANCE_MIB:g} MiB of its "
        f"RSS at {when(reference_s)}"
        + (" (minute 5 and the last 10 minutes of 30, scaled to this shorter run)"
           if scaled(config.minutes) else "")
        + ". Claim p99 (every replica's claims in each 10-s window, from their histograms)"
        " and lag p99 (fire_at to the subscriber's first copy, jobs first seen in the"
        " window) are flat when the median over the run's last third is at most "
        f"{FLAT_RATIO:g} x the second third's + {FLAT_SLACK_MS:g} ms. The table "
        "(pg_total_relation_size: heap, indexes, TOAST) reaches a plateau when its peak "
        f"over the last third is at most {PLATEAU_GROWTH:.0%} above its peak over the "
        "second third. Rows: the statistics' live and dead tuples (count(*) would scan); "
        "vacuums: of the jobs table since the start (pg_stat_user_tables).",
        "",
        "| min | RSS MiB | claim p99 ms | lag p99 ms | published | table MiB | live rows "
        "| dead rows | vacuums | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for sample in run.samples[MINUTE_EVERY - 1 :: MINUTE_EVERY]:
        rss = "/".join(f"{v:.1f}" for v in sample.rss_mib)
        lines.append(
            f"| {sample.at_s / 60:g} | {rss} | {sample.claim_p99_ms:.1f} | {sample.lag_p99_ms:.1f} "
            f"| {sample.published:,} | {sample.table_bytes / 2**20:.1f} | {sample.live_rows:,} "
            f"| {sample.dead_rows:,} | {sample.vacuums} | {sample.load_1m:g} |"
        )
    return "\n".join(lines) + "\n"


def render_chart(run: SoakRun, path: Path) -> None:
    """RSS, lag p99, claim p99 and table size over the run, the thirds marked."""
    samples = run.samples
    minutes = [s.at_s / 60 for s in samples]
    run_min = run.config.run_s / 60
    figure, axes = plt.subplots(2, 2, figsize=(12, 7.5), sharex=True)
    (rss_axes, lag_axes), (claim_axes, table_axes) = axes
    replicas = len(samples[0].rss_mib) if samples else 0
    for index in range(replicas):
        rss_axes.plot(minutes, [s.rss_mib[index] for s in samples], label=f"replica {index + 1}")
    reference_s, window_s = rss_times(run.config.run_s)
    if samples:
        reference = min(samples, key=lambda s: abs(s.at_s - reference_s))
        for value in reference.rss_mib:
            if not math.isnan(value):
                rss_axes.fill_between([window_s / 60, run_min], value - RSS_TOLERANCE_MIB,
                                      value + RSS_TOLERANCE_MIB, color="#c44e52",
                                      alpha=0.06)  # fmt: skip
    rss_axes.set_ylabel("MiB")
    rss_axes.set_title(f"Replica RSS (band: ±{RSS_TOLERANCE_MIB:g} MiB of the reference)")
    rss_axes.legend(fontsize=8)
    lag_axes.plot(minutes, [s.lag_p99_ms for s in samples], color="#6a9f58")
    lag_axes.set_ylabel("ms")
    lag_axes.set_title("Lag p99 per 10-s window (fire_at to the subscriber)")
    claim_axes.plot(minutes, [s.claim_p99_ms for s in samples], color="#8c8c8c")
    claim_axes.set_ylabel("ms")
    claim_axes.set_title("Claim p99 per 10-s window (all replicas)")
    table_axes.plot(minutes, [s.table_bytes / 2**20 for s in samples], color="#4878a8",
                    label="jobs, total MiB")  # fmt: skip
    table_axes.set_ylabel("MiB")
    rows = table_axes.twinx()
    rows.plot(minutes, [s.live_rows / 1e6 for s in samples], color="#d1885c", linewidth=0.8,
              label="live rows")  # fmt: skip
    rows.plot(minutes, [s.dead_rows / 1e6 for s in samples], color="#8c564b", linewidth=0.8,
              linestyle="--", label="dead rows")  # fmt: skip
    rows.set_ylabel("rows, millions (statistics)")
    for before, after in itertools.pairwise(samples):
        if after.vacuums > before.vacuums:
            table_axes.axvline(after.at_s / 60, color="#4878a8", alpha=0.3, linewidth=3)
    lines = table_axes.get_legend_handles_labels()[0] + rows.get_legend_handles_labels()[0]
    table_axes.legend(lines, [str(line.get_label()) for line in lines], fontsize=8,
                      loc="upper left")  # fmt: skip
    table_axes.set_title(f"Table size (retention {run.config.retention_s:g} s; "
                         "wide lines: a vacuum ran)")  # fmt: skip
    for row in axes:
        for ax in row:
            for third in (run_min / 3, 2 * run_min / 3):
                ax.axvline(third, color="#999999", linestyle=":", linewidth=1)
            ax.set_xlim(0, run_min)
    for ax in axes[1]:
        ax.set_xlabel("minutes into the run (dotted: the thirds compared)")
    smoke = "Smoke run, not the soak: " if scaled(run.config.minutes) else "Soak: "
    figure.suptitle(f"{smoke}{run.config.replicas} replicas, {run.result.notes['rate_per_s']:,} "
                    f"jobs/s, {run.config.minutes:g} min"
                    + ("" if run.passed else " — targets missed"))  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
