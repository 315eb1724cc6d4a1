# Service set-up shared by scripts/test.sh and scripts/demo.sh (source it; it runs nothing).
# On a fresh Debian/Ubuntu machine as root it installs and starts what is missing; where
# PostgreSQL and Mosquitto already run, it leaves them as they are.

SERVICES_PROJECT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
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

# True when the Debian package's command is not here (checked by command, not by dpkg,
# so a service installed another way counts as present).
package_missing() {
    case $1 in
        mosquitto) ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ] ;;
        mosquitto-clients) ! command -v mosquitto_sub >/dev/null ;;
        postgresql) ! command -v psql >/dev/null ;;
        pgbouncer) ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ] ;;
        python3-venv) ! python3 -c 'import ensurepip, venv' 2>/dev/null ;;
        prometheus) ! command -v promtool >/dev/null ;;
        chromium) [ ! -x /usr/bin/chromium ] ;;  # the browser tests use this path
        chromium-driver) [ ! -x /usr/bin/chromedriver ] ;;
        *) ! command -v "$1" >/dev/null ;;
    esac
}

# install_missing PACKAGE...: apt-get install those of the Debian packages that are missing.
install_missing() {
    local package missing=()
    for package in "$@"; do
        if package_missing "$package"; then missing+=("$package"); fi
    done
    [ ${#missing[@]} -eq 0 ] || { echo "installing: ${missing[*]}"; apt_install "${missing[@]}"; }
}

# start_postgres URL: start the local clusters unless 127.0.0.1:5432 answers, make URL
# reachable (as root, on a fresh cluster), and print the server's version.
start_postgres() {
    local url=$1 cluster version hba
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        for cluster in /etc/postgresql/*/main; do
            version=$(basename "$(dirname "$cluster")")
            pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        done
        for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
    fi
    if ! psql "$url" -Atqc 'select 1' >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        # A fresh Debian cluster asks for a password on 127.0.0.1: trust local TCP (tests, demo).
        hba=$(su postgres -c "psql -Atqc 'show hba_file'")
        sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
        su postgres -c "psql -Atqc 'select pg_reload_conf()'" >/dev/null
        echo "added 'host all all 127.0.0.1/32 trust' to $hba"
    fi
    psql "$url" -Atqc 'select version()'
}

mosquitto_binary() { command -v mosquitto || echo /usr/sbin/mosquitto; }

# The system Mosquitto on 1883, if nothing listens there (the tests do not need it).
start_system_mosquitto() {
    if ! port_in_use 1883; then
        mkdir -p /run/mosquitto && chown mosquitto: /run/mosquitto 2>/dev/null || true
        mosquitto -d -c /etc/mosquitto/mosquitto.conf || echo "system mosquitto not started (not needed)"
    fi
    { "$(mosquitto_binary)" -h || true; } | head -1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# first_free_port START: the first port from START up that nothing on 127.0.0.1 listens on.
first_free_port() {
    local port=$1
    while port_in_use "$port"; do port=$((port + 1)); done
    echo "$port"
}

# start_mosquitto_nodrop PORT DIR: a Mosquitto of our own on 127.0.0.1:PORT with the
# project's no-drop limits (deploy/mosquitto/mosquitto.conf), its state and log in DIR.
# It runs in a session of its own, so a Ctrl-C at the terminal reaches only the script that
# owns it, which stops it in order. Sets mosquitto_pid; returns 1 if it does not listen
# within 10 s.
start_mosquitto_nodrop() {
    local port=$1 dir=$2
    local config="$dir/mosquitto.conf" log="$dir/mosquitto.log"
    mkdir -p "$dir"
    # Keep the project's limits and persistence; own where it listens, saves and logs.
    grep -Ev '^(listener|persistence_location|log_dest|log_type|allow_anonymous)( |$)' \
        "$SERVICES_PROJECT_DIR/deploy/mosquitto/mosquitto.conf" >"$config"
    printf '%s\n' "listener $port 127.0.0.1" "allow_anonymous true" \
        "persistence_location $dir/" "log_dest file $log" >>"$config"
    # As root, mosquitto would switch to its own user, which cannot write DIR.
    if [ "$(id -u)" = 0 ]; then echo "user root" >>"$config"; fi
    setsid "$(mosquitto_binary)" -c "$config" </dev/null >>"$log" 2>&1 &
    mosquitto_pid=$!
    local deadline=$((SECONDS + 10))
    until port_in_use "$port"; do
        if ! kill -0 "$mosquitto_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
            echo "mosquitto did not start on port $port:" >&2
            cat "$log" >&2
            return 1
        fi
        sleep 0.05
    done
}
