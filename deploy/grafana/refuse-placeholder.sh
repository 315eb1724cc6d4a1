#!/bin/sh
# Grafana's entrypoint in compose: refuses a missing admin password or .env.example's
# change-me placeholder, then runs the image's own entrypoint ("$@"). Checked here rather
# than with ${…:?} in docker-compose.yml, which would demand the password of every
# `docker compose up`, with or without the monitoring profile.
set -eu
case "${GF_SECURITY_ADMIN_PASSWORD:-}" in
    '' | change-me*)
        echo "GRAFANA_ADMIN_PASSWORD: set a password of your own in .env (see .env.example)" >&2
        exit 1 ;;
esac
exec "$@"
