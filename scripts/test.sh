#!/usr/bin/env bash
# The one test command (README, .ci/run): on a fresh Debian/Ubuntu machine it installs
# and starts what is missing, builds the virtualenv, then runs every check and test.
set -euo pipefail
cd "$(dirname "$0")/.."

PGURL="${JOBPUB_TEST_DATABASE_URL:-postgresql://postgres@127.0.0.1:5432/postgres}"
apt_updated=""

say() { printf '\n==> %s\n' "$*"; }

apt_install() {
    if [ "$(id -u)" != 0 ]; then
        echo "missing: $* (run as root, or install them: apt-get install $*)" >&2
        exit 1
    fi
    [ -n "$apt_updated" ] || { apt-get update -qq; apt_updated=1; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

say "system packages"
missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v psql >/dev/null || missing+=(postgresql)
command -v docker-compose >/dev/null || missing+=(docker-compose)
python3 -c 'import ensurepip, venv' 2>/dev/null || missing+=(python3-venv)
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || missing+=(pgbouncer)
[ ${#missing[@]} -eq 0 ] || { echo "installing: ${missing[*]}"; apt_install "${missing[@]}"; }

say "PostgreSQL"
if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    for cluster in /etc/postgresql/*/main; do
        version=$(basename "$(dirname "$cluster")")
        pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    done
    for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
fi
if ! psql "$PGURL" -Atqc 'select 1' >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    # A fresh Debian cluster asks for a password on 127.0.0.1: trust local TCP for tests.
    hba=$(su postgres -c "psql -Atqc 'show hba_file'")
    sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    su postgres -c "psql -Atqc 'select pg_reload_conf()'" >/dev/null
    echo "added 'host all all 127.0.0.1/32 trust' to $hba"
fi
psql "$PGURL" -Atqc 'select version()'

say "Mosquitto (the tests start their own on a free port with deploy/mosquitto/mosquitto.conf)"
if ! (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; then
    mkdir -p /run/mosquitto && chown mosquitto: /run/mosquitto 2>/dev/null || true
    mosquitto -d -c /etc/mosquitto/mosquitto.conf || echo "system mosquitto not started (not needed)"
fi
{ "$(command -v mosquitto || echo /usr/sbin/mosquitto)" -h || true; } | head -1

say "virtualenv"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,bench]'
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
