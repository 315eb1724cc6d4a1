#!/usr/bin/env bash
# Watch jobpub work without Docker: on a fresh Debian/Ubuntu machine as root, or where
# PostgreSQL and Mosquitto are installed, this installs what is missing, starts PostgreSQL
# if it is down, a no-drop Mosquitto of its own, three `jobpub run` replicas and a
# subscriber, inserts a few jobs and prints each message as it arrives, with its lag.
# Ctrl-C (or SIGTERM) stops everything it started and nothing else. The database stays for
# inspection, and so does PostgreSQL if this script had to start it (a system service).
#
# Settings (all optional):
#   JOBPUB_DEMO_ADMIN_URL  a PostgreSQL URL ending in /DBNAME that may create databases
#                          (postgresql://postgres@127.0.0.1:5432/postgres)
#   JOBPUB_DEMO_DATABASE   the database to create if missing and migrate (jobpub_demo)
#   JOBPUB_DEMO_MQTT_PORT  the demo broker's port (the first free one from 1884)
#   JOBPUB_DEMO_HTTP_PORT  the replicas take the first free ports from here (8080)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/services.sh

ADMIN_URL=${JOBPUB_DEMO_ADMIN_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
DATABASE=${JOBPUB_DEMO_DATABASE:-jobpub_demo}
REPLICAS=3
TOPIC_ROOT=jobpub-demo
SUBSCRIBER_ID=jobpub-demo-subscriber

if [[ ! $DATABASE =~ ^[a-z_][a-z0-9_]*$ ]]; then
    echo "JOBPUB_DEMO_DATABASE: use lower-case letters, digits and _ (got '$DATABASE')" >&2
    exit 2
fi
DATABASE_URL="${ADMIN_URL%/*}/$DATABASE"

say "system packages"
install_missing postgresql mosquitto mosquitto-clients python3-venv

say "PostgreSQL"
start_postgres "$ADMIN_URL"

say "database $DATABASE"
# Created only if missing, so a second run keeps the first run's rows; \gexec runs the
# CREATE that the SELECT returns (none when the database exists), with the name quoted.
psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -Atq -v name="$DATABASE" <<'SQL'
SELECT format('CREATE DATABASE %I', :'name')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'name')
\gexec
SQL
echo "$DATABASE_URL"

say "virtualenv (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
# Installed once, and again when pyproject.toml changes; an editable install follows the code.
if [ ! -x .venv/bin/jobpub ] || [ pyproject.toml -nt .venv/bin/jobpub ]; then
    .venv/bin/python -m pip install -q -e .
fi
.venv/bin/jobpub --version

say "jobpub migrate"
JOBPUB_DATABASE_URL="$DATABASE_URL" .venv/bin/jobpub migrate

# Everything this script starts, in the order it is stopped: replicas first (they drain
# into the broker), then the subscriber, then the broker.
replica_pids=()
subscriber_pids=()
broker_pids=()
run_dir=$(mktemp -d "${TMPDIR:-/tmp}/jobpub-demo.XXXXXX")

running() { [[ " $(jobs -pr | tr '\n' ' ') " == *" $1 "* ]]; }

# stop LABEL PID...: SIGTERM, up to 20 s to finish (a replica drains within
# JOBPUB_SHUTDOWN_TIMEOUT, 10 s), then SIGKILL. Only our own jobs are signalled, so a
# recycled pid is never hit.
stop() {
    local label=$1 pid alive=()
    shift
    for pid in "$@"; do if running "$pid"; then alive+=("$pid"); fi; done
    if [ ${#alive[@]} -gt 0 ]; then
        echo "stopping $label (pid ${alive[*]})"
        kill -TERM "${alive[@]}" 2>/dev/null || true
        local deadline=$((SECONDS + 20))
        while [ "$SECONDS" -lt "$deadline" ] && [ -z "$forced" ]; do
            alive=()
            for pid in "$@"; do if running "$pid"; then alive+=("$pid"); fi; done
            [ ${#alive[@]} -gt 0 ] || break
            sleep 0.1
        done
    fi
    local code report=""
    for pid in "$@"; do
        if running "$pid"; then
            echo "$label: pid $pid did not stop; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        code=0
        wait "$pid" 2>/dev/null || code=$?
        report+="${report:+, }pid $pid exit $code"
    done
    [ -z "$report" ] || echo "stopped $label ($report)"
}

forced=""
stop_all() {
    local status=$?
    trap - EXIT
    trap 'forced=1' INT TERM HUP # a second Ctrl-C: do not wait for the drain
    say "stopping what this script started"
    stop "replicas" "${replica_pids[@]}"
    stop "subscriber" "${subscriber_pids[@]}"
    stop "Mosquitto" "${broker_pids[@]}"
    echo "logs kept in $run_dir"
    echo "database left for inspection (PostgreSQL keeps running): psql $DATABASE_URL"
    exit "$status"
}
# A signal only asks: the waits below notice within a second and the demo ends with exit 0,
# its normal end. The services run in sessions of their own, so a terminal's Ctrl-C reaches
# only this script, which stops them in order (replicas drain into a broker still up).
stop_requested=""
trap 'stop_requested=1' INT TERM HUP
trap stop_all EXIT

say "Mosquitto (deploy/mosquitto/mosquitto.conf: no messages dropped)"
mqtt_port=${JOBPUB_DEMO_MQTT_PORT:-$(first_free_port 1884)}
start_mosquitto_nodrop "$mqtt_port" "$run_dir/mosquitto"
broker_pids+=("$mosquitto_pid")
echo "started Mosquitto (pid $mosquitto_pid) on mqtt://127.0.0.1:$mqtt_port"

say "subscriber (mosquitto_sub on '#')"
# Subscribe once in a persistent session and leave: from here on the broker queues every
# message for this client id, so none published before the reader connects is missed.
mosquitto_sub -p "$mqtt_port" -i "$SUBSCRIBER_ID" -c -q 1 -t '#' -E
# It writes into a pipe that this script reads and prints, at the end.
mkfifo "$run_dir/messages"
setsid mosquitto_sub -p "$mqtt_port" -i "$SUBSCRIBER_ID" -c -q 1 -t '#' -F '%U\t%t\t%p' \
    </dev/null >"$run_dir/messages" &
subscriber_pids+=($!)
echo "started mosquitto_sub (pid $!); this script prints what it receives"
exec 3<"$run_dir/messages"

say "$REPLICAS replicas (jobpub run)"
http_port=${JOBPUB_DEMO_HTTP_PORT:-8080}
http_ports=()
for i in $(seq "$REPLICAS"); do
    http_port=$(first_free_port "$http_port")
    JOBPUB_DATABASE_URL="$DATABASE_URL" \
        JOBPUB_MQTT_URL="mqtt://127.0.0.1:$mqtt_port" \
        JOBPUB_HTTP_HOST=127.0.0.1 \
        JOBPUB_HTTP_PORT="$http_port" \
        setsid .venv/bin/jobpub run </dev/null >"$run_dir/replica-$i.log" 2>&1 &
    replica_pids+=($!)
    http_ports+=("$http_port")
    echo "started replica $i (pid $!): http://127.0.0.1:$http_port/metrics, log $run_dir/replica-$i.log"
    http_port=$((http_port + 1))
done

# /readyz answers 200 once a replica has its database and its broker.
ready() {
    local status
    (
        exec 3<>"/dev/tcp/127.0.0.1/$1"
        printf 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n' >&3
        IFS= read -r -t 5 status <&3
        [[ $status == *" 200 "* ]]
    ) 2>/dev/null
}
deadline=$((SECONDS + 60))
for i in $(seq "$REPLICAS"); do
    until ready "${http_ports[i - 1]}"; do
        [ -z "$stop_requested" ] || exit 0
        if ! running "${replica_pids[i - 1]}" || [ "$SECONDS" -ge "$deadline" ]; then
            echo "replica $i did not become ready; the end of its log:" >&2
            tail -n 20 "$run_dir/replica-$i.log" >&2
            exit 1
        fi
        sleep 0.1
    done
done
echo "all $REPLICAS replicas ready (database and broker connected)"
# The web dashboard goes here once `jobpub web` exists: start it like a replica, on its
# own free port, and print its URL.

say "showcase: one job due now, one in 5 s, one in 10 s, one in 30 s"
# fire_at travels in the payload as epoch milliseconds, so the subscriber can print the lag.
psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -Atq -F ' ' <<SQL
INSERT INTO jobs (topic, payload, fire_at)
SELECT '$TOPIC_ROOT/' || slug,
       jsonb_build_object('showcase', label,
                          'fire_at_ms', floor(extract(epoch FROM due) * 1000)::bigint)::text,
       due
FROM (VALUES ('due-now', 'due now', 0), ('in-5s', 'in 5 s', 5),
             ('in-10s', 'in 10 s', 10), ('in-30s', 'in 30 s', 30)) AS showcase (slug, label, delay)
CROSS JOIN LATERAL (SELECT now() + make_interval(secs => delay)) AS fire (due)
RETURNING 'inserted job', id, topic, 'fire_at', to_char(fire_at, 'HH24:MI:SS.MS');
SQL
# ------------------------------------------------------------------------------------
# RECURRING SCHEDULE: jobpub has no schedules yet. When `jobpub schedule` lands, add one
# here (say, every 10 s to $TOPIC_ROOT/heartbeat) and name it in the heading above.
# ------------------------------------------------------------------------------------

say "watching: messages print as they arrive (Ctrl-C stops everything this script started)"
echo "add your own: psql $DATABASE_URL -c \"INSERT INTO jobs (topic, payload, fire_at)" \
    "VALUES ('$TOPIC_ROOT/mine', 'hello', now() + interval '3 s')\""

# print_message ARRIVAL TOPIC PAYLOAD (mosquitto_sub -F '%U\t%t\t%p': the arrival in epoch
# seconds.nanoseconds): one line, with the lag from the payload's fire_at_ms if it has one.
print_message() {
    local arrived=$1 topic=$2 payload=$3 seconds milliseconds
    if [[ ! $arrived =~ ^([0-9]+)\.([0-9]{3}) ]]; then
        echo "message (unparsed): $*" # a payload with a line break
        return
    fi
    seconds=${BASH_REMATCH[1]} milliseconds=${BASH_REMATCH[2]}
    printf 'message %s at %(%H:%M:%S)T.%s' "$topic" "$seconds" "$milliseconds"
    if [[ $payload =~ \"fire_at_ms\"\ *:\ *([0-9]+) ]]; then
        printf ', %d ms after its fire_at' $((seconds * 1000 + 10#$milliseconds - BASH_REMATCH[1]))
    fi
    printf ': %s\n' "$payload"
}

# Print messages until asked to stop; every second with none, check that nothing this
# script started has ended on its own.
while [ -z "$stop_requested" ]; do
    if IFS=$'\t' read -r -t 1 arrived topic payload <&3; then
        print_message "$arrived" "$topic" "$payload"
        continue
    elif [ $? -le 128 ] && [ -z "$stop_requested" ]; then # end of input, not a timeout
        echo "mosquitto_sub closed its output; stopping the demo (logs: $run_dir)" >&2
        exit 1
    fi
    for pid in "${replica_pids[@]}" "${subscriber_pids[@]}" "${broker_pids[@]}"; do
        if ! running "$pid"; then
            echo "pid $pid ended on its own; stopping the demo (logs: $run_dir)" >&2
            exit 1
        fi
    done
done
exit 0
