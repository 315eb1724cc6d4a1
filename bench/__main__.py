"""`python -m bench <what>`: run a benchmark, print its table, write its results.

Results go to bench/results/<name>.json and .png (and a table on stdout). `all` runs
everything but `chaos` (it restarts the machine's PostgreSQL) and the long `scale` and
`retention`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    capacity,
    chaos,
    clients,
    index_cost,
    rate,
    scale,
    scenarios,
    schedules,
    web_speed,
)
from bench.harness import Bench, ScenarioResult, bench_environment
from bench.report import render_chaos_chart, render_chart, render_table

RESULTS = Path(__file__).resolve().parent / "results"


def _chaos(bench: Bench, args: argparse.Namespace) -> list[ScenarioResult]:
    only = set(args.only.split(",")) if args.only else None
    return chaos.all_scenarios(bench, only, chaos.Stream(args.jobs or chaos.JOBS, args.spread))


# Commands that run one thing on their own, each from its own module.
SINGLE: dict[str, Callable[[Bench, argparse.Namespace], list[ScenarioResult]]] = {
    # --repeat runs, on the first --replicas count
    "schedules": lambda bench, args: [
        schedules.schedules(bench, args.jobs or 10_000, int(args.replicas.split(",")[0]))
        for _ in range(args.repeat)
    ],
    "capacity": lambda bench, args: capacity.measure(bench, args.database, repeat=args.repeat),
    "scale": lambda bench, args: scale.run(bench, args.cases, args.repeat),
    "retention": lambda bench, args: retention_pair(
        bench, args.jobs or 100_000, args.old_rows, args.repeat
    ),
    "chaos": _chaos,
    "rate": lambda bench, args: rate.measure(bench, repeat=args.repeat),
    "index-cost": lambda bench, args: index_cost.measure(bench),
    "web-speed": lambda bench, args: web_speed.measure(
        bench, args.rows, args.requests, reuse=args.reuse
    ),
}


def main() -> int:
    args = _parser().parse_args()
    settings = dict(item.split("=", 1) for item in args.set)
    counts = [int(n) for n in args.replicas.split(",")]
    runs = [(n, p) for n in counts for p in ((False,) if n == 1 else (False, True))]
    results: list[ScenarioResult] = []
    jobs = args.jobs or 100_000
    with bench_environment(args.database, settings) as bench:
        if args.what in ("all", "drain"):
            if args.baseline_jobs:
                results.append(scenarios.baseline(bench, args.baseline_jobs))
                results.append(scenarios.ceiling(bench, jobs))
            for replicas, partitioned in runs:
                attempts = [
                    scenarios.drain(bench, jobs, replicas, partitioned=partitioned)
                    for _ in range(args.repeat)
                ]
                results.append(median_run(attempts))
                print(f"  {results[-1].name}: {results[-1].notes['runs_jobs_per_s']}",
                      file=sys.stderr)  # fmt: skip
        if args.what in ("all", "on-time"):
            results.append(scenarios.on_time(bench, 10_000, spread=10.0, lead=3.0))
        if args.what in ("all", "idle"):
            results.append(scenarios.idle(bench, args.idle_seconds, probes=20))
        if args.what in ("all", "clients"):
            results.extend(clients.compare(bench.broker.port, 50_000, args.repeat))
        if args.what in SINGLE:
            results.extend(SINGLE[args.what](bench, args))

    # these runs are kept side by side, one per day
    dated = args.what in ("web-speed", "index-cost")
    name = args.name or (time.strftime("%Y-%m-%d-") + args.what if dated else args.what)
    RESULTS.mkdir(exist_ok=True)
    # The promises of Reliability and of the scale targets, checked: the command fails
    # when a target is missed.
    targets: dict[str, Callable[[list[ScenarioResult]], list[str]]] = {
        "chaos": chaos.shortfalls,
        "scale": lambda found: list(scale.shortfalls(found)),
        "web-speed": lambda found: list(web_speed.shortfalls(found)),
    }
    checked = args.what in targets
    missed = targets[args.what](results) if checked else []
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "settings": settings,
        "machine": _machine(),
        "results": [dataclasses.asdict(r) for r in results],
        **({"targets_missed": missed} if checked else {}),
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = render_table(results)
    (RESULTS / f"{name}.md").write_text(_run_page(name, report, table))
    charts = {
        "chaos": render_chaos_chart,
        "scale": scale.render_chart,
        "capacity": capacity.render_chart,
        "web-speed": web_speed.render_chart,
    }
    chart = charts.get(args.what, render_chart)
    chart(results, RESULTS / f"{name}.png")
    print(table)
    print(f"\nwritten: bench/results/{name}.json, .md, .png")
    if checked:
        print(
            f"\n{args.what}: every target met" if not missed else f"\n{args.what}: targets missed"
        )
        for line in missed:
            print(f"  {line}")
    return 1 if missed else 0


def _scale_cases(text: str) -> list[scale.ScaleCase]:
    try:
        return scale.parse_cases(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "what",
        choices=["all", "drain", "on-time", "idle", "clients", *SINGLE],
    )
    parser.add_argument(
        "--jobs", type=int, default=None,
        help=f"rows per drain run (default 100,000) or chaos scenario (default {chaos.JOBS:,})",
    )  # fmt: skip
    parser.add_argument("--baseline-jobs", type=int, default=20_000)
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per drain variant; the median is reported"
    )
    parser.add_argument(
        "--only", default=None, help="chaos: comma-separated scenarios (default: all of them)"
    )
    parser.add_argument(
        "--spread", type=float, default=chaos.SPREAD,
        help=f"chaos: seconds over which the rows fall due (default {chaos.SPREAD:g})",
    )  # fmt: skip
    parser.add_argument(
        "--cases", default=scale.DEFAULT_CASES, type=_scale_cases,
        help=f"scale: comma-separated cases, empty,processed-<N>k|m,scheduled-<N>k|m "
        f"(default {scale.DEFAULT_CASES})",
    )  # fmt: skip
    parser.add_argument(
        "--old-rows", type=int, default=2_000_000,
        help="retention: old published rows pruned during the drain (default 2,000,000)",
    )  # fmt: skip
    parser.add_argument(
        "--rows", type=int, default=web_speed.ROWS,
        help=f"web-speed: rows in its table (default {web_speed.ROWS:,})",
    )  # fmt: skip
    parser.add_argument(
        "--requests", type=int, default=web_speed.REQUESTS,
        help=f"web-speed: timed requests per endpoint (default {web_speed.REQUESTS})",
    )  # fmt: skip
    parser.add_argument(
        "--reuse", action="store_true",
        help=f"web-speed: keep {web_speed.DATABASE} if it holds --rows rows (seeding takes long)",
    )  # fmt: skip
    parser.add_argument("--name", default=None, help="results file name (default: what)")
    parser.add_argument(
        "--replicas", default="1,2,4", help="replica counts for the drain (default 1,2,4)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a jobpub setting for every replica, e.g. --set batch_size=500",
    )
    parser.add_argument(
        "--database",
        default=os.environ.get(
            "JOBPUB_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="an admin URL; the bench creates and drops its own database",
    )
    return parser


def retention_pair(bench: Bench, jobs: int, old_rows: int, repeat: int) -> list[ScenarioResult]:
    """The drain with old rows kept and with them pruned meanwhile, runs interleaved so
    the machine's other load falls on both; the median run of each."""
    by_pruning: dict[bool, list[ScenarioResult]] = {False: [], True: []}
    for _ in range(repeat):
        for pruning in (False, True):
            result = scenarios.retention_drain(bench, jobs, old_rows, pruning=pruning)
            by_pruning[pruning].append(result)
            print(f"  {result.name}: {result.jobs_per_s:,}", file=sys.stderr)
    kept, pruned = median_run(by_pruning[False]), median_run(by_pruning[True])
    pruned.notes["of_kept"] = round(pruned.jobs_per_s / kept.jobs_per_s, 3)
    return [kept, pruned]


def median_run(attempts: list[ScenarioResult]) -> ScenarioResult:
    """The run with the median throughput, carrying every run's figures in its notes.

    Losses, duplicates and early jobs are summed over all runs: one in any run counts.
    """
    ordered = sorted(attempts, key=lambda r: r.jobs_per_s)
    chosen = ordered[len(ordered) // 2]
    if chosen.delivery is not None:
        for other in attempts:
            if other is not chosen and other.delivery is not None:
                chosen.delivery.lost += other.delivery.lost
                chosen.delivery.duplicated += other.delivery.duplicated
                chosen.delivery.published_twice += other.delivery.published_twice
                chosen.delivery.early += other.delivery.early
    chosen.notes["runs_jobs_per_s"] = [r.jobs_per_s for r in attempts]
    return chosen


def _run_page(name: str, report: dict[str, Any], table: str) -> str:
    """The run's page beside its JSON and chart: what ran, where and when, then the figures."""
    machine = report["machine"]
    settings = report["settings"] or "jobpub's defaults"
    return (
        f"# `{report['command']}`, {report['date']}\n\n"
        f"Raw figures: [{name}.json]({name}.json); chart: [{name}.png]({name}.png).\n\n"
        f"Machine: {machine['cpus']} CPUs, {machine['memory_gib']} GiB, "
        f"kernel {machine['kernel']}, Python {machine['python']}, "
        f"{machine['postgresql']}, {machine['mosquitto']}.\n\n"
        f"Settings: {settings}.\n\n{table}\n"
    )


def _machine() -> dict[str, str]:
    def run(*command: str) -> str:
        try:
            return subprocess.run(command, capture_output=True, text=True, check=False,
                                  timeout=10).stdout.strip().splitlines()[0]  # fmt: skip
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unknown"

    memory_kb = next(
        (line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
         if line.startswith("MemTotal:")), "0",
    )  # fmt: skip
    return {
        "cpus": str(os.cpu_count()),
        "memory_gib": f"{int(memory_kb) / 1024 / 1024:.1f}",
        "python": platform.python_version(),
        "postgresql": run("psql", "--version"),
        "mosquitto": run("mosquitto", "-h"),
        "kernel": platform.release(),
    }


if __name__ == "__main__":
    raise SystemExit(main())
