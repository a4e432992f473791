#!/usr/bin/env bash
# Runs the demo on the services that `make up` started: imports an AIS file, waits until the
# projections have caught up, prints a summary, then keeps everything serving until Ctrl-C or
# SIGTERM, when it runs `make down`.
#
# The import and the statistics use the admin account that infra/services.sh set up
# (MERIDIAN_ADMIN_EMAIL, password in MERIDIAN_ADMIN_PASSWORD_FILE). The summary names the
# account and its password file, never the password; the live map's login form takes both.
#
# Usage: infra/demo.sh [FILE]   (default: data/ais/nyharbor_2020_06_30_first_hour.csv)
#
# Environment:
#   MERIDIAN_DEMO_WAIT_SECS  seconds the importer and then this script wait for the
#                            projections after the import (default: 600). The import sends
#                            the first hour of reports in about 10 s, and the local broker
#                            then needed about 4 minutes to pass them on (2026-12-05).
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DEFAULT_FILE=$REPO_ROOT/data/ais/nyharbor_2020_06_30_first_hour.csv
WAIT_SECS=${MERIDIAN_DEMO_WAIT_SECS:-600}
# Seconds between two checks that the services are still running.
WATCH_INTERVAL_SECS=10
# File with the `Authorization` header of the admin's access token, which curl reads, so the
# token never appears on a command line. log_in creates it with mode 0600.
AUTH_HEADER_FILE=""

# Logs in as the admin and writes the header file. An access token lives 15 minutes by
# default, so main logs in again after the import.
log_in() {
    [[ -r $ADMIN_PASSWORD_FILE ]] ||
        die "cannot read the admin password file $(display_path "$ADMIN_PASSWORD_FILE"); make up creates it"
    [[ -n $AUTH_HEADER_FILE ]] || AUTH_HEADER_FILE=$(mktemp "$RUN_DIR/demo-auth.XXXXXX")
    python3 - "$COMMAND_ADDR" "$ADMIN_EMAIL" "$ADMIN_PASSWORD_FILE" "$AUTH_HEADER_FILE" <<'PYTHON' ||
import json
import sys
import urllib.error
import urllib.request

address, email, password_file, header_file = sys.argv[1:5]
with open(password_file, encoding="utf-8") as file:
    password = file.read().rstrip("\r\n")
request = urllib.request.Request(
    f"http://{address}/v1/auth/login",
    data=json.dumps({"email": email, "password": password}).encode(),
    headers={"Content-Type": "application/json"},
)
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        token = json.load(response)["access_token"]
except urllib.error.HTTPError as error:
    body = json.loads(error.read() or b"{}")
    sys.exit(f"POST /v1/auth/login returned {error.code} {body.get('error')}: {body.get('message')}")
with open(header_file, "w", encoding="utf-8") as file:
    file.write(f"Authorization: Bearer {token}\n")
PYTHON
        die "logging in as $ADMIN_EMAIL failed; see the message above"
}

remove_header_file() {
    [[ -z $AUTH_HEADER_FILE ]] || rm -f "$AUTH_HEADER_FILE"
}

# Prints the body of GET /v1/stats of the query service.
fetch_stats() {
    curl -fsS --max-time 5 -H "@$AUTH_HEADER_FILE" "http://$QUERY_ADDR/v1/stats" ||
        die "GET http://$QUERY_ADDR/v1/stats failed; see $(display_path "$LOG_DIR/query-service.log")"
}

# Prints the total lag of both projections plus the outbox rows not yet published.
pending_events() {
    python3 -c '
import json, sys
stats = json.loads(sys.argv[1])
lags = [stats["projections"][name]["lag"] for name in ("read-models", "analytics")]
print(sum(lags) + stats["outbox_pending"])
' "$1"
}

# Waits until nothing is pending in the outbox or either projection, for at most WAIT_SECS.
wait_for_projections() {
    local deadline=$((SECONDS + WAIT_SECS)) pending
    local stats
    while true; do
        stats=$(fetch_stats)
        pending=$(pending_events "$stats")
        ((pending > 0)) || return 0
        if ((SECONDS >= deadline)); then
            log "warning: $pending events still pending after ${WAIT_SECS} s; the summary shows the lag"
            return 0
        fi
        sleep 0.5
    done
}

# Prints the summary from the stats before and after the import and its wall time in seconds.
print_summary() {
    local before=$1 after=$2 wall_secs=$3
    python3 - "$before" "$after" "$wall_secs" "$COMMAND_ADDR" "$QUERY_ADDR" "$QUERY_ADDR_2" \
        "$SOCKET_ADDR" "$SOCKET_ADDR_2" "$ADMIN_EMAIL" "$(display_path "$ADMIN_PASSWORD_FILE")" <<'PYTHON'
import json
import sys

before, after = json.loads(sys.argv[1]), json.loads(sys.argv[2])
wall_secs = float(sys.argv[3])
command_addr, query_addr, query_addr_2, socket_addr, socket_addr_2 = sys.argv[4:9]
admin_email, admin_password_file = sys.argv[9:11]

new_locations = after["location_events"] - before["location_events"]
rate = new_locations / wall_secs if wall_secs > 0 else 0.0
lags = after["projections"]

rows = [
    ("users", f'{after["users"]:,}'),
    ("events stored", f'{after["events"]:,} ({after["location_events"]:,} location events)'),
    ("new location events", f"{new_locations:,} in {wall_secs:.1f} s of import wall time"),
    ("location events/s", f"{rate:,.0f} (new location events / import wall time)"),
    ("location history rows", f'{after["location_history"]:,}'),
    (
        "projection lag",
        f'read-models {lags["read-models"]["lag"]:,}, analytics {lags["analytics"]["lag"]:,}, '
        f'outbox pending {after["outbox_pending"]:,}',
    ),
    ("command API", f"http://{command_addr}  (OpenAPI: http://{command_addr}/openapi.json)"),
    ("query API", f"http://{query_addr}  (OpenAPI: http://{query_addr}/openapi.json)"),
    ("query API, replica 2", f"http://{query_addr_2}"),
    ("live map (dashboard)", f"http://{query_addr}/  and  http://{query_addr_2}/"),
    ("Socket.IO", f"http://{socket_addr}  and  http://{socket_addr_2}"),
    ("log in as", f"{admin_email}, password in {admin_password_file}"),
]
print()
print("Meridian demo")
for label, value in rows:
    print(f"  {label:<22} {value}")
if new_locations == 0:
    print()
    print("  The import stored no new location events: this file was imported before, and the")
    print("  importer's idempotency keys made the repeat a no-op. make reset deletes all data.")
print()
PYTHON
}

# Stops the services and the stack, then exits.
shut_down() {
    trap - INT TERM
    echo
    log "stopping everything (make down)"
    "${MAKE:-make}" -C "$REPO_ROOT" --no-print-directory down
    exit 0
}

# Keeps running until a signal arrives, warning once when a service stops meanwhile.
serve_until_signal() {
    local warned=0
    log "serving until Ctrl-C; open the live map at http://$QUERY_ADDR/ and log in as" \
        "$ADMIN_EMAIL with the password in $(display_path "$ADMIN_PASSWORD_FILE")"
    while true; do
        sleep "$WATCH_INTERVAL_SECS" &
        wait $! || true
        if ((warned == 0)) && ! "$REPO_ROOT/infra/services.sh" status >/dev/null 2>&1; then
            log "warning: a service is down; infra/services.sh status shows which, and its log is under $(display_path "$LOG_DIR")"
            warned=1
        fi
    done
}

main() {
    local file=${1:-$DEFAULT_FILE}
    command -v curl >/dev/null || die "curl is missing from PATH, and the demo needs it"
    http_ok "http://$QUERY_ADDR/healthz" ||
        die "Meridian is not running: GET http://$QUERY_ADDR/healthz failed. Start it with make up."
    trap shut_down INT TERM
    trap remove_header_file EXIT

    local before after started finished wall_secs
    log_in
    before=$(fetch_stats)
    log "open the live map at http://$QUERY_ADDR/ (or http://$QUERY_ADDR_2/) to watch the import;" \
        "log in as $ADMIN_EMAIL with the password in $(display_path "$ADMIN_PASSWORD_FILE")"
    started=$(date +%s%N)
    "$REPO_ROOT/infra/import.sh" "$file" --wait-timeout-secs "$WAIT_SECS"
    finished=$(date +%s%N)
    wall_secs=$(python3 -c 'import sys; print((int(sys.argv[2]) - int(sys.argv[1])) / 1e9)' \
        "$started" "$finished")

    log_in
    wait_for_projections
    after=$(fetch_stats)
    print_summary "$before" "$after" "$wall_secs"
    serve_until_signal
}

main "$@"
