#!/bin/sh
# The compose database's entrypoint: refuses a missing password or .env.example's change-me
# placeholder, then runs the image's own entrypoint ("$@"). It checks before the first
# start initialises the database, because the init scripts never run again after that.
set -eu
for name in POSTGRES_PASSWORD PUBLISHER_DB_PASSWORD; do
    eval "password=\${$name:-}"
    case "$password" in
        '' | change-me*)
            echo "$name: set a password of your own in .env (see .env.example)" >&2
            exit 1 ;;
    esac
done
exec "$@"
