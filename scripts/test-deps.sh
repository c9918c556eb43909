#!/usr/bin/env bash
# Debian packages the test suite drives for real: nginx (in front of uWSGI),
# systemd-analyze (the unit), shellcheck (install.sh), logrotate (its config),
# wrk (the load test and the benchmark), redis-server (the benchmark's peers),
# strace (make bench-profile), chattr (the fault matrix makes the store immutable),
# chromium and chromium-driver (the dashboard's browser test drives /usr/bin/chromium
# through /usr/bin/chromedriver; Selenium never downloads a browser or driver),
# postgresql (the PostgreSQL store's tests start a server from its binaries),
# prometheus (promtool checks deploy/prometheus/; a real Prometheus scrapes the kit),
# openssl (the multi-host deploy test makes the database server's TLS certificates).
# Installs only what is missing; called by `make test`.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
have nginx || need+=(nginx)
have systemd-analyze || need+=(systemd)
have shellcheck || need+=(shellcheck)
have logrotate || need+=(logrotate)
have wrk || need+=(wrk)
have redis-server || need+=(redis-server)
have strace || need+=(strace)
have chattr || need+=(e2fsprogs)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)
have promtool || need+=(prometheus)
have openssl || need+=(openssl)
[ ${#need[@]} -eq 0 ] && exit 0

sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)
export DEBIAN_FRONTEND=noninteractive
echo "test-deps: installing ${need[*]}"
if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"; then
    "${sudo[@]}" apt-get update -q
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${need[@]}"
fi
