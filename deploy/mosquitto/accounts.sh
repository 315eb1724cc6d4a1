#!/bin/sh
# Writes the broker's password file and ACL into DIRECTORY from the environment, so no
# secret is committed or baked into an image. The compose broker runs it at each start.
#   publisher  writes only below each prefix in TOPIC_PREFIXES ("home/,job/": home/#, job/#)
#   reader     reads every topic, and $SYS/broker/uptime for the healthcheck
set -eu
directory=${1:?usage: accounts.sh DIRECTORY}
: "${MQTT_PUBLISHER_PASSWORD:?is not set (see .env.example)}"
: "${MQTT_READER_PASSWORD:?is not set (see .env.example)}"
: "${TOPIC_PREFIXES:?is not set (see .env.example)}"

for name in MQTT_PUBLISHER_PASSWORD MQTT_READER_PASSWORD; do
    eval "password=\$$name"
    case "$password" in
        change-me*)
            echo "$name: set a password of your own in .env (see .env.example)" >&2
            exit 1 ;;
        # mosquitto_passwd -U splits a line at every ':'; a newline would start an account.
        *:* | *"
"*)
            echo "$name must not contain ':' or a newline" >&2
            exit 1 ;;
    esac
done

umask 077
mkdir -p "$directory"
# Written in clear and hashed in place (-U): no password appears in a command line.
printf 'publisher:%s\nreader:%s\n' "$MQTT_PUBLISHER_PASSWORD" "$MQTT_READER_PASSWORD" \
    >"$directory/passwd"
mosquitto_passwd -U "$directory/passwd"

prefixes=0
set -f  # a prefix is text, not a glob
IFS=,
{
    echo "user publisher"
    for prefix in $TOPIC_PREFIXES; do
        prefix=$(printf '%s' "$prefix" | sed 's/^ *//; s/ *$//')
        [ -n "$prefix" ] || continue
        # jobpub matches prefixes as text; an ACL grants whole topic levels only.
        case "$prefix" in
            *'#'* | *'+'* | '$'* | *[!/])
                echo "TOPIC_PREFIXES: '$prefix' must end with '/' and hold no + # or leading \$" >&2
                exit 1 ;;
        esac
        echo "topic write ${prefix}#"
        prefixes=$((prefixes + 1))
    done
    echo
    echo "user reader"
    echo "topic read #"
    echo "topic read \$SYS/broker/uptime"
} >"$directory/acl"
[ "$prefixes" -gt 0 ] || { echo "TOPIC_PREFIXES names no prefix" >&2; exit 1; }

# Mosquitto reads these files after it has dropped root for its own user.
if [ "$(id -u)" = 0 ] && id mosquitto >/dev/null 2>&1; then
    chown -R mosquitto:mosquitto "$directory"
fi
