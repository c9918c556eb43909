#!/usr/bin/env bash
# Install spoolkit as a systemd service on a Debian host.
#
#   sudo deploy/install.sh                      install, or update after a git pull
#   sudo deploy/install.sh --uninstall          remove service and code; keep data, config, user
#   sudo deploy/install.sh --uninstall --purge  also delete /var/lib/spoolkit, /etc/spoolkit,
#                                               /var/log/spoolkit and the spoolkit user
#   deploy/install.sh --dry-run [...]           print every command instead of running it
#   deploy/install.sh --root DIR [...]          install into DIR as if it were / (a throwaway
#                                               root: no apt, no systemctl, users in DIR/etc)
#
# Idempotent: running it again gives the same result. It never overwrites
# /etc/spoolkit/spoolkit.env (your settings and API token; it only adds a
# FLASK_SECRET_KEY where one is missing) and never deletes jobs unless --purge
# is given.
#
# What it does: Debian packages to build uWSGI; a system user "spoolkit";
# the code in /opt/spoolkit (owned by root, read-only to the service) with a
# venv in /opt/spoolkit/.venv; /var/lib/spoolkit (0700) for the spool and the
# store; /etc/spoolkit/spoolkit.env (0640, a fresh API token and Flask secret
# key); the systemd unit, logrotate file and nginx site (available, not
# enabled); then enables and (re)starts the service.
set -euo pipefail

ROOT=""
DRY_RUN=0
UNINSTALL=0
PURGE=0
PYTHON=${PYTHON:-python3}
SRC=$(cd "$(dirname "$0")/.." && pwd)
USER_NAME=spoolkit

usage() {
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT=$(cd "${2:?--root needs a directory}" && pwd); shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
done
if [ "$PURGE" = 1 ] && [ "$UNINSTALL" = 0 ]; then
    echo "install.sh: --purge only goes with --uninstall" >&2
    exit 2
fi
if [ "$DRY_RUN" = 0 ] && [ -z "$ROOT" ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (sudo), or try --dry-run" >&2
    exit 1
fi

APP_DIR=$ROOT/opt/spoolkit
STATE_DIR=$ROOT/var/lib/spoolkit
LOG_DIR=$ROOT/var/log/spoolkit
CONF_DIR=$ROOT/etc/spoolkit
ENV_FILE=$CONF_DIR/spoolkit.env
UNIT=$ROOT/etc/systemd/system/spoolkit.service
LOGROTATE=$ROOT/etc/logrotate.d/spoolkit
NGINX_SITE=$ROOT/etc/nginx/sites-available/spoolkit
NGINX_ENABLED=$ROOT/etc/nginx/sites-enabled/spoolkit
# useradd and friends edit $ROOT/etc/passwd instead of /etc/passwd.
PREFIX_ARGS=()
[ -n "$ROOT" ] && PREFIX_ARGS=(--prefix "$ROOT")

say() { printf '==> %s\n' "$*"; }

# Run a command, or only print it with --dry-run.
run() {
    if [ "$DRY_RUN" = 1 ]; then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# Numeric id of a user or group, from $ROOT/etc (the host's NSS knows nothing of a throwaway root).
id_of() {  # id_of passwd|group NAME
    awk -F: -v name="$2" '$1 == name { print $3 }' "$ROOT/etc/$1" 2>/dev/null
}

install_packages() {
    [ -n "$ROOT" ] && return 0
    say "Debian packages to build uWSGI"
    run apt-get install -y --no-install-recommends python3 python3-venv python3-dev gcc libc6-dev
}

ensure_user() {
    say "system user $USER_NAME"
    if [ -z "$(id_of group "$USER_NAME")" ]; then
        run groupadd --system "${PREFIX_ARGS[@]}" "$USER_NAME"
    fi
    if [ -z "$(id_of passwd "$USER_NAME")" ]; then
        run useradd --system --gid "$USER_NAME" --home-dir /var/lib/spoolkit \
            --shell /usr/sbin/nologin --no-create-home "${PREFIX_ARGS[@]}" "$USER_NAME"
    fi
    # nginx (www-data) reaches the socket through the spoolkit group.
    if [ -n "$(id_of passwd www-data)" ]; then
        run usermod --append --groups "$USER_NAME" "${PREFIX_ARGS[@]}" www-data
    fi
}

# Numeric owner ids for chown/install -o, so they also work inside a throwaway root.
resolve_ids() {
    SK_UID=$(id_of passwd "$USER_NAME")
    SK_GID=$(id_of group "$USER_NAME")
    if [ -z "$SK_UID" ] || [ -z "$SK_GID" ]; then
        if [ "$DRY_RUN" = 1 ]; then
            SK_UID=$USER_NAME SK_GID=$USER_NAME  # not created in a dry run
        else
            echo "install.sh: user or group $USER_NAME is missing after creating it" >&2
            exit 1
        fi
    fi
}

install_code() {
    say "code in $APP_DIR (root-owned, read-only to the service)"
    run install -d -m 0755 "$APP_DIR" "$APP_DIR/deploy"
    for file in app.py tasks.py uwsgi.ini requirements.txt README.md; do
        run install -m 0644 "$SRC/$file" "$APP_DIR/$file"
    done
    run install -m 0644 "$SRC/deploy/uwsgi-production.ini" "$APP_DIR/deploy/uwsgi-production.ini"
    # Replace the package as a whole, so files deleted upstream go too: its
    # modules and the dashboard's templates and static files.
    run rm -rf "$APP_DIR/spoolkit"
    local path
    while IFS= read -r path; do
        run install -d -m 0755 "$APP_DIR/$path"
    done < <(cd "$SRC" && find spoolkit -name __pycache__ -prune -o -type d -print | sort)
    while IFS= read -r path; do
        run install -m 0644 "$SRC/$path" "$APP_DIR/$path"
    done < <(cd "$SRC" && find spoolkit -name __pycache__ -prune -o -type f \
        \( -name '*.py' -o -path 'spoolkit/templates/*' -o -path 'spoolkit/static/*' \) -print | sort)
    say "venv in $APP_DIR/.venv (compiles uWSGI the first time)"
    if [ ! -x "$APP_DIR/.venv/bin/python" ]; then
        run "$PYTHON" -m venv "$APP_DIR/.venv"
    fi
    run "$APP_DIR/.venv/bin/pip" install --disable-pip-version-check --quiet \
        -r "$APP_DIR/requirements.txt"
}

random_secret() {
    "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))'
}

# An env file written before the dashboard lacks FLASK_SECRET_KEY, and with a
# token set the app refuses to start without one: add the line, change nothing else.
add_secret_key() {
    if grep -q '^FLASK_SECRET_KEY=' "$ENV_FILE"; then
        say "keeping $ENV_FILE as it is"
        return 0
    fi
    say "adding a new FLASK_SECRET_KEY to $ENV_FILE (the rest kept as it is)"
    if [ "$DRY_RUN" = 1 ]; then
        echo "+ (append a random FLASK_SECRET_KEY to $ENV_FILE)"
        return 0
    fi
    local secret last
    secret=$(random_secret)
    last=$(tail -c 1 "$ENV_FILE")
    {
        [ -z "$last" ] || echo  # the last line lacked its newline
        echo "# Signs the dashboard's sign-in cookie (added by install.sh)."
        echo "FLASK_SECRET_KEY=$secret"
    } >> "$ENV_FILE"
}

install_state() {
    say "state $STATE_DIR (0700), logs $LOG_DIR, config $CONF_DIR"
    run install -d -o "$SK_UID" -g "$SK_GID" -m 0700 "$STATE_DIR"
    run install -d -o "$SK_UID" -g "$SK_GID" -m 0750 "$LOG_DIR"
    run install -d -o 0 -g "$SK_GID" -m 0750 "$CONF_DIR"
    if [ -e "$ENV_FILE" ]; then
        add_secret_key
        return 0
    fi
    say "writing $ENV_FILE with a new API token and secret key"
    if [ "$DRY_RUN" = 1 ]; then
        echo "+ (write $ENV_FILE from deploy/spoolkit.env.example with a random" \
            "SPOOLKIT_API_TOKEN and FLASK_SECRET_KEY)"
        return 0
    fi
    local token secret tmp
    token=$(random_secret)
    secret=$(random_secret)
    tmp=$(mktemp "$CONF_DIR/.spoolkit.env.XXXXXX")
    sed -e "s|^SPOOLKIT_API_TOKEN=.*|SPOOLKIT_API_TOKEN=$token|" \
        -e "s|^FLASK_SECRET_KEY=.*|FLASK_SECRET_KEY=$secret|" \
        "$SRC/deploy/spoolkit.env.example" > "$tmp"
    chown "0:$SK_GID" "$tmp"
    chmod 0640 "$tmp"
    mv "$tmp" "$ENV_FILE"
}

install_system_files() {
    say "systemd unit, logrotate file, nginx site (available, not enabled)"
    run install -D -m 0644 "$SRC/deploy/systemd/spoolkit.service" "$UNIT"
    run install -D -m 0644 "$SRC/deploy/logrotate/spoolkit" "$LOGROTATE"
    run install -D -m 0644 "$SRC/deploy/nginx/spoolkit.conf" "$NGINX_SITE"
}

start_service() {
    [ -n "$ROOT" ] && return 0
    say "enable and (re)start spoolkit.service"
    run systemctl daemon-reload
    run systemctl enable spoolkit.service
    # Reload when running (new code, running jobs re-run uncounted), else start.
    run systemctl reload-or-restart spoolkit.service
}

uninstall() {
    if [ -z "$ROOT" ]; then
        say "stop and disable spoolkit.service"
        run systemctl disable --now spoolkit.service || true
    fi
    say "remove unit, logrotate file, nginx site and $APP_DIR"
    run rm -f "$UNIT" "$LOGROTATE" "$NGINX_SITE" "$NGINX_ENABLED"
    run rm -rf "$APP_DIR"
    [ -z "$ROOT" ] && run systemctl daemon-reload
    if [ "$PURGE" = 1 ]; then
        say "purge: delete jobs, results, logs, config and the user"
        run rm -rf "$STATE_DIR" "$LOG_DIR" "$CONF_DIR"
        if [ -n "$(id_of passwd "$USER_NAME")" ]; then
            run userdel "${PREFIX_ARGS[@]}" "$USER_NAME"
        fi
        if [ -n "$(id_of group "$USER_NAME")" ]; then
            run groupdel "${PREFIX_ARGS[@]}" "$USER_NAME"
        fi
    else
        say "kept $STATE_DIR (jobs), $CONF_DIR (settings) and the user; --purge deletes them"
    fi
}

if [ "$UNINSTALL" = 1 ]; then
    uninstall
else
    install_packages
    ensure_user
    resolve_ids
    install_code
    install_state
    install_system_files
    start_service
fi
say "done"
