#!/bin/bash
# The team's MLflow tracking server (docs/scaling.md "A team tracking server"):  scripts/team_server.sh [mlflow server options]
# e.g.  LUNGEXP_SERVER_ENV=/etc/mlflow/server.env scripts/team_server.sh --allowed-hosts mlflow.lab.example
#
# PostgreSQL behind it; MLflow's basic-auth app in front (logins, per-experiment permissions); loopback only,
# so other machines reach it through a TLS reverse proxy. Secrets come from the env file (mode 600), never
# from the command line, where `ps` shows them to every user of the machine. The env file sets:
#   MLFLOW_BACKEND_STORE_URI        postgresql+psycopg2://mlflow@localhost/mlflow (no password in it)
#   PGPASSFILE                      a .pgpass (mode 600) with the database password; libpq reads it
#   MLFLOW_AUTH_CONFIG_PATH         a copy of scripts/team_server_auth.ini (users' database, default permission)
#   MLFLOW_AUTH_ADMIN_PASSWORD      the admin's password; only the first start reads it (it creates the admin)
#   MLFLOW_FLASK_SERVER_SECRET_KEY  a random string (the auth app's CSRF protection)
#   MLFLOW_ARTIFACTS_DESTINATION    the shared artifact root (a folder of this server, or s3://...)
#   and, for an s3:// root, optionally AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
#   AWS_DEFAULT_REGION, MLFLOW_S3_ENDPOINT_URL.
# The env file is data, not shell (a password may hold &, ;, $, `, \, #, quotes): one KEY=value a line, the
# value taken literally; blank lines and lines starting with # are skipped. A value with spaces or quotes at
# either end, or with " #" in it, is quoted as a whole ('...' or "..."; one pair is removed, nothing inside
# is interpreted); unquoted, it is refused rather than guessed at (a stray space, an inline comment).
# Anything else, an unknown key or a key set twice is refused with its line number, never echoing a value.
# Options given to the script go to `mlflow server` after the defaults below, so they win.
set -euo pipefail

ENV_FILE=${LUNGEXP_SERVER_ENV:-/etc/mlflow/server.env}

fail() {
    echo "team_server.sh: $*" >&2
    exit 2
}

# $1 must be readable by this user and by no one else (group and others: no permission bits).
private() {
    [ -r "$1" ] || fail "$1: cannot read it ($2)"
    local mode
    mode=$(stat -L -c %a "$1")
    [ "${mode: -2}" = 00 ] || fail "$1: other users can read it (mode $mode); chmod 600 $1"
}

KNOWN_KEYS=" MLFLOW_BACKEND_STORE_URI PGPASSFILE MLFLOW_AUTH_CONFIG_PATH MLFLOW_AUTH_ADMIN_PASSWORD \
MLFLOW_FLASK_SERVER_SECRET_KEY MLFLOW_ARTIFACTS_DESTINATION AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY \
AWS_SESSION_TOKEN AWS_DEFAULT_REGION MLFLOW_S3_ENDPOINT_URL "

# Export the settings of env file $1 (the rules are in the header above).
read_env_file() {
    local line number=0 key value seen=" "
    while IFS= read -r line || [ -n "$line" ]; do
        number=$((number + 1))
        line=${line%$'\r'}  # a file saved with Windows line ends
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        [[ $line =~ ^([A-Za-z_][A-Za-z0-9_]*)=(.*)$ ]] \
            || fail "$1 line $number: not KEY=value (no spaces around =, no export, one setting a line)"
        key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
        [[ $KNOWN_KEYS == *" $key "* ]] || fail "$1 line $number: unknown key $key; known:${KNOWN_KEYS% }"
        [[ $seen == *" $key "* ]] && fail "$1 line $number: $key is set a second time"
        seen+="$key "
        if [[ $value =~ ^\"(.*)\"$ || $value =~ ^\'(.*)\'$ ]]; then
            value=${BASH_REMATCH[1]}
        elif [[ $value =~ [[:space:]]# ]]; then
            fail "$1 line $number: $key's value holds \" #\"; put a comment on a line of its own, or quote the value"
        elif [[ $value =~ ^[[:space:]\"\'] || $value =~ [[:space:]\"\']$ ]]; then
            fail "$1 line $number: $key's value starts or ends with a space or an unmatched quote; quote all of it"
        fi
        export "$key=$value"
    done < "$1"
}

private "$ENV_FILE" "set LUNGEXP_SERVER_ENV to the server's env file"
read_env_file "$ENV_FILE"
for name in MLFLOW_BACKEND_STORE_URI PGPASSFILE MLFLOW_AUTH_CONFIG_PATH MLFLOW_FLASK_SERVER_SECRET_KEY \
        MLFLOW_ARTIFACTS_DESTINATION; do
    [ -n "${!name:-}" ] || fail "$ENV_FILE sets no $name"
done
case $MLFLOW_BACKEND_STORE_URI in
    *://*:*@*) fail "$ENV_FILE: MLFLOW_BACKEND_STORE_URI holds a password; put it in $PGPASSFILE instead" ;;
esac
private "$PGPASSFILE" "PGPASSFILE in $ENV_FILE"
[ -r "$MLFLOW_AUTH_CONFIG_PATH" ] || fail "$MLFLOW_AUTH_CONFIG_PATH: cannot read it (MLFLOW_AUTH_CONFIG_PATH in $ENV_FILE)"

# The checkout's venv (`make install`) if there is one, else the mlflow on PATH.
MLFLOW=$(dirname "$0")/../.venv/bin/mlflow
[ -x "$MLFLOW" ] || MLFLOW=mlflow
command -v "$MLFLOW" >/dev/null || fail "no mlflow: \`make install\` in this checkout, or put a venv's bin on PATH"
exec "$MLFLOW" server --app-name basic-auth --host 127.0.0.1 --port 5000 --workers 4 "$@"
