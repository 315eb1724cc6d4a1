"""The built wheel carries the migrations: `jobpub migrate` from a fresh virtualenv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PROJECT

SQL_FILES = sorted(path.name for path in (PROJECT / "sql").glob("*.sql"))


def run(
    *command: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command], check=True, capture_output=True, text=True,
        cwd=cwd, env=env,
    )  # fmt: skip


@pytest.mark.timeout(600)  # a wheel build and an install from the package index
def test_jobpub_migrate_works_from_the_wheel_in_a_new_virtualenv(
    tmp_path: Path, empty_db_url: str
) -> None:
    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", wheels, PROJECT)
    [wheel] = wheels.glob("jobpub-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JOBPUB_", "PYTHON"))}
    env["JOBPUB_DATABASE_URL"] = empty_db_url
    installed = run(
        venv / "bin" / "python",
        "-c",
        "import jobpub; print(jobpub.__file__)",
        cwd=tmp_path,
        env=env,
    )
    assert installed.stdout.startswith(str(venv)), "the wheel's copy, not the checkout"
    run(venv / "bin" / "jobpub", "migrate", "--wait", "0", cwd=tmp_path, env=env)

    with psycopg.connect(empty_db_url) as conn:
        versions = conn.execute("SELECT version FROM jobpub_migrations ORDER BY version")
        assert [row[0] for row in versions] == [int(name[:4]) for name in SQL_FILES]
        tables = conn.execute("SELECT to_regclass('jobs') IS NOT NULL").fetchone()
        assert tables == (True,)
