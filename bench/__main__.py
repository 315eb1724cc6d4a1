"""`python -m bench <what>`: run a benchmark, print its table, write its results.

Results go to bench/results/<name>.json and .png (and a table on stdout). `all` runs
everything but `chaos` (it restarts the machine's PostgreSQL) and the long `scale`,
`retention` and `soak`.
"""

from __future__ import annotations

import argparse
import contextlib
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
    soak,
    soak_report,
    web_speed,
)
from bench.harness import Bench, ScenarioResult, bench_environment
from bench.report import render_chaos_chart, render_chart, render_table
from bench.soak_verdicts import batch_size_for, scaled
from testbed.postgres_server import start_default_postgres

RESULTS = Path(__file__).resolve().parent / "results"


def _chaos(bench: Bench, args: argparse.Namespace) -> list[ScenarioResult]:
    only = set(args.only.split(",")) if args.only else None
    return chaos.all_scenarios(bench, only, chaos.Stream(args.jobs or chaos.JOBS, args.spread))


# Commands that run one thing on their own, each from its own module.
SINGLE: dict[str, Callable[[Bench, argparse.Namespace], list[ScenarioResult]]] = {
    # --repeat runs on the first --replicas count, each followed by the broker's floor
    "schedules": lambda bench, args: [
        result
        for _ in range(args.repeat)
        for result in (
            schedules.schedules(
                bench,
                args.jobs or 10_000,
                int(args.replicas.split(",")[0]),
                trace=args.trace,
                spread=args.schedule_spread,
            ),
            schedules.broker_floor(bench, args.jobs or 10_000),
        )
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


# Benches whose figures depend on vacuum: the shared test server runs with autovacuum off.
OWN_POSTGRES = ("soak", "scale")


def main() -> int:
    args = _parser().parse_args()
    args.replicas = args.replicas or ("4" if args.what == "soak" else "1,2,4")
    args.postgres = args.postgres or ("own" if args.what in OWN_POSTGRES else "shared")
    settings = dict(item.split("=", 1) for item in args.set)
    if args.what == "soak":
        return _soak(args, settings)
    counts = [int(n) for n in args.replicas.split(",")]
    runs = [(n, p) for n in counts for p in ((False,) if n == 1 else (False, True))]
    results: list[ScenarioResult] = []
    jobs = args.jobs or 100_000
    with contextlib.ExitStack() as stack:
        if args.postgres == "own":
            args.database = stack.enter_context(start_default_postgres())
        bench = stack.enter_context(bench_environment(args.database, settings))
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
        "postgres": _postgres_label(args.postgres),
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
        "schedules": schedules.render_chart,
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
        choices=["all", "drain", "on-time", "idle", "clients", "soak", *SINGLE],
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
        "--schedule-spread", type=float, default=0.0, metavar="SECONDS",
        help="schedules: each schedule's spread; lag then counts from each row's fire_at",
    )  # fmt: skip
    parser.add_argument(
        "--trace", action="store_true",
        help="schedules: strace the replicas' broker sockets and compare three more "
        "subscribers (a diagnostic: tracing slows the replicas)",
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
        "--replicas", default=None,
        help="replica counts for the drain (default 1,2,4); soak: one count (default 4)",
    )  # fmt: skip
    parser.add_argument("--minutes", type=float, default=30.0,
                        help="soak: minutes of the stream (default 30)")  # fmt: skip
    parser.add_argument("--rate", type=int, default=10_000,
                        help="soak: jobs per second (default 10,000)")  # fmt: skip
    parser.add_argument(
        "--retention", type=float, default=None,
        help=f"soak: JOBPUB_RETENTION in seconds (default {soak.DEFAULT_RETENTION_S:g}, or a "
        "sixth of a shorter run)",
    )  # fmt: skip
    parser.add_argument(
        "--postgres", choices=["own", "shared"], default=None,
        help="a throwaway PostgreSQL on its defaults (own: autovacuum on, as deployed; the "
        "default for soak and scale) or the server of --database (shared: the default for "
        "the rest, whose figures compare with earlier runs)",
    )  # fmt: skip
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


def _soak(args: argparse.Namespace, settings: dict[str, str]) -> int:
    """The soak writes its samples and verdicts beside the usual table; a run shorter than
    the targets' 30 minutes is a smoke run, named and labelled so."""
    minutes = args.minutes
    if minutes * 60 < 3 * soak.SAMPLE_S:
        raise SystemExit(f"soak: --minutes {minutes:g} is too short: 0.5 at least (3 samples)")
    if "," in args.replicas:
        raise SystemExit(f"soak: --replicas takes one count, not {args.replicas}")
    try:
        batch_size_for(args.rate)
    except ValueError as exc:
        raise SystemExit(f"soak: {exc}") from exc
    retention = args.retention if args.retention is not None else (
        soak.SoakConfig.default_retention(minutes))  # fmt: skip
    config = soak.SoakConfig(minutes, args.rate, int(args.replicas), retention)
    smoke = scaled(minutes)
    name = args.name or ("soak" if not smoke else f"soak-smoke-{minutes:g}min")
    print(f"soak: {config}; {'smoke run, ' if smoke else ''}results as {name}", file=sys.stderr)
    with contextlib.ExitStack() as stack:
        admin_url = (stack.enter_context(start_default_postgres()) if args.postgres == "own"
                     else args.database)  # fmt: skip
        bench = stack.enter_context(bench_environment(admin_url, settings))
        run = soak.run(bench, config)
    postgres = _postgres_label(args.postgres)
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "smoke": smoke,
        "postgres": postgres,
        "settings": settings,
        "machine": _machine(),
        "results": [dataclasses.asdict(run.result)],
        "soak": soak_report.as_json(run),
        "targets_missed": [f"{v.name}: {v.measured}" for v in run.verdicts if not v.passed],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    table = render_table([run.result])
    section = soak_report.render_section(run, smoke=smoke, postgres=postgres)
    (RESULTS / f"{name}.md").write_text(_run_page(name, report, section + "\n" + table))
    soak_report.render_chart(run, RESULTS / f"{name}.png")
    print(section)
    print(f"\nwritten: bench/results/{name}.json, .md, .png")
    return 0 if run.passed else 1


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


def _postgres_label(postgres: str) -> str:
    return (
        "its own, on PostgreSQL's defaults (autovacuum on)"
        if postgres == "own"
        else "the shared test server (autovacuum as that server has it)"
    )


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
        f"PostgreSQL server: {report.get('postgres', 'the shared test server')}.\n\n"
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
