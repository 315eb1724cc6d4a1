#!/usr/bin/env bash
# The one test command (README, .ci/run): on a fresh Debian/Ubuntu machine it installs
# and starts what is missing, builds the virtualenv, then runs every check and test.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/lib/services.sh
PGURL="${JOBPUB_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"

say "system packages"
install_missing mosquitto mosquitto-clients postgresql docker-compose python3-venv pgbouncer prometheus \
    chromium chromium-driver

say "PostgreSQL"
start_postgres "$PGURL"

say "Mosquitto (the tests start their own on a free port with deploy/mosquitto/mosquitto.conf)"
start_system_mosquitto

say "virtualenv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,bench,web]'
export PATH="$PWD/.venv/bin:$PATH"

# One command per line: `set -e` ignores a failure on the left of `&&`, which let a
# ruff error pass before.
say "ruff";          ruff check src tests bench testbed
                     ruff format --check src tests bench testbed
say "mypy";          mypy
say "import-linter"; lint-imports
say "hadolint";      hadolint Dockerfile
say "compose";       docker-compose --env-file .env.example config -q
                     echo "docker-compose.yml is valid"
say "pytest";        pytest "$@"
