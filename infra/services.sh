#!/usr/bin/env bash
# Starts, stops and reports the Meridian processes from binaries that cargo has built: the
# command service, the outbox relay, the projection workers and two query-service replicas.
#
# Usage: infra/services.sh start|stop|status [--profile release|debug]
#
#   start   start each process that is not running, then wait until the three HTTP services
#           return 200 from GET /healthz, both replicas accept Socket.IO connections, and
#           both workers are still alive
#   stop    send SIGTERM, wait up to 15 s for a graceful shutdown, then send SIGKILL
#   status  print each process's state; exit status 3 when one of them is down
#
# Binaries come from ${CARGO_TARGET_DIR:-target}/<profile>/ (default profile: release), so
# build them first (`make up` does). Logs go to .stack/logs/<name>.log and pid files to
# .stack/run/<name>.pid, where the second replica's name is query-service-2. The processes
# read the MERIDIAN_* settings from the environment. On the first start, meridian-keys
# creates the master key file .stack/keys/master-keys.json, meridian-token-keys the token
# key file .stack/keys/token-keys.json, and this script a random admin password in
# .stack/keys/admin-password (mode 0600). The command service creates the admin account
# with that password when it starts; an existing account keeps its password.
#
# Environment:
#   MERIDIAN_COMMAND_ADDR        command service address (default: 127.0.0.1:8080)
#   MERIDIAN_QUERY_ADDR          HTTP address of query-service (default: 127.0.0.1:8081)
#   MERIDIAN_QUERY_ADDR_2        HTTP address of query-service-2 (default: 127.0.0.1:8082)
#   MERIDIAN_SOCKET_ADDR         Socket.IO address of query-service (default: 127.0.0.1:8091)
#   MERIDIAN_SOCKET_ADDR_2       Socket.IO address of query-service-2 (default: 127.0.0.1:8092)
#   MERIDIAN_SERVICES_WAIT_SECS  seconds to wait for each /healthz (default: 60)
#   MERIDIAN_ADMIN_EMAIL         the admin account (default: admin@meridian.local)
#   MERIDIAN_ADMIN_PASSWORD_FILE its password, created when missing
#                                (default: .stack/keys/admin-password)
#   MERIDIAN_TOKEN_KEY_FILE      keys that sign access tokens, created when missing
#                                (default: .stack/keys/token-keys.json)
#   MERIDIAN_RATE_LIMIT_PER_ADDRESS, MERIDIAN_RATE_LIMIT_PER_USER
#                                requests per minute and client address or user
#                                (default here: 1000000 each; see LOCAL_RATE_LIMIT)
#   RUST_LOG                     log filter of all five processes
#                                (their default: info,sqlx=warn,rdkafka=warn)
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

WAIT_SECS=${MERIDIAN_SERVICES_WAIT_SECS:-60}
KAFKA_PORT=${MERIDIAN_KAFKA_PORT:-9092}
MONGODB_PORT=${MERIDIAN_MONGODB_PORT:-27017}
POSTGRES_PORT=${MERIDIAN_POSTGRES_PORT:-5432}
# Seconds the workers must stay alive after start. A worker that cannot reach Kafka, MongoDB
# or PostgreSQL usually exits within this time, but a slower failure goes unnoticed here.
SETTLE_SECS=2
STOP_GRACE_SECS=15

# The command service starts first and alone, so that on a fresh machine it creates the
# database and applies the migrations before the other processes connect.
SERVICES=(command-service outbox-relay projection-workers query-service query-service-2)
BINARIES=(command-service outbox-relay projection-workers query-service meridian-keys
    meridian-token-keys)

# Request limit per client address and per user, per minute, unless set. Every local client
# shares the address 127.0.0.1, and the importer sends all its requests as one user. While it
# waits for the projections, it polls the query service for every vessel. Importing the
# first-hour file with debug binaries on a 2-core machine sent about 27,700 requests in one
# minute (2026-12-05). Release binaries respond faster, so the importer polls faster.
# The services' defaults (6000 per address and 3000 per user) would throttle a demo import,
# so the local stack lifts them. The limits on failed logins keep their defaults.
LOCAL_RATE_LIMIT=1000000
export MERIDIAN_RATE_LIMIT_PER_ADDRESS=${MERIDIAN_RATE_LIMIT_PER_ADDRESS:-$LOCAL_RATE_LIMIT}
export MERIDIAN_RATE_LIMIT_PER_USER=${MERIDIAN_RATE_LIMIT_PER_USER:-$LOCAL_RATE_LIMIT}
# The command service creates or promotes this admin at start.
export MERIDIAN_ADMIN_EMAIL=$ADMIN_EMAIL MERIDIAN_ADMIN_PASSWORD_FILE=$ADMIN_PASSWORD_FILE
# The live map logs in at the command service from the browser.
export MERIDIAN_COMMAND_PUBLIC_URL=${MERIDIAN_COMMAND_PUBLIC_URL:-http://$COMMAND_ADDR}

# Make the services listen where this script probes them. query-service-2 gets its own
# addresses in start_service.
export MERIDIAN_COMMAND_ADDR=$COMMAND_ADDR MERIDIAN_QUERY_ADDR=$QUERY_ADDR
export MERIDIAN_SOCKET_ADDR=$SOCKET_ADDR

usage() {
    sed -n '5,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Prints the binary that service NAME runs.
service_binary() {
    case $1 in
    query-service-2) printf 'query-service\n' ;;
    *) printf '%s\n' "$1" ;;
    esac
}

# Prints the string that the command line of service NAME contains. Both replicas match
# the same string, so each is identified by its own pid file.
service_pattern() {
    printf '/%s \n' "$(service_binary "$1")"
}

# Prints the HTTP address of service NAME, or nothing for a worker.
service_address() {
    case $1 in
    command-service) printf '%s\n' "$COMMAND_ADDR" ;;
    query-service) printf '%s\n' "$QUERY_ADDR" ;;
    query-service-2) printf '%s\n' "$QUERY_ADDR_2" ;;
    esac
}

# Prints the Socket.IO address of service NAME, or nothing when it serves none.
service_socket_address() {
    case $1 in
    query-service) printf '%s\n' "$SOCKET_ADDR" ;;
    query-service-2) printf '%s\n' "$SOCKET_ADDR_2" ;;
    esac
}

# Fails unless PostgreSQL, the Kafka broker and the MongoDB server accept connections.
check_stack() {
    local name port entry missing=()
    for entry in "PostgreSQL $POSTGRES_PORT" "Kafka $KAFKA_PORT" "MongoDB $MONGODB_PORT"; do
        read -r name port <<<"$entry"
        port_open "$port" || missing+=("$name on 127.0.0.1:$port")
    done
    if ((${#missing[@]} > 0)); then
        die "not reachable: ${missing[*]}. Start the local stack with infra/stack.sh start."
    fi
}

check_binaries() {
    local name missing=()
    for name in "${BINARIES[@]}"; do
        [[ -x $TARGET_DIR/$PROFILE/$name ]] || missing+=("$(display_path "$TARGET_DIR/$PROFILE/$name")")
    done
    if ((${#missing[@]} > 0)); then
        local flag=""
        [[ $PROFILE == release ]] && flag=" --release"
        die "missing binaries: ${missing[*]}. Build them with: cargo build$flag --workspace --bins"
    fi
}

# Names of the processes this run started, stopped again if the start fails.
LAUNCHED=()

stop_launched_on_failure() {
    local status=$?
    if ((status != 0 && ${#LAUNCHED[@]} > 0)); then
        log "start failed; stopping the processes it started: ${LAUNCHED[*]}"
        stop_services "${LAUNCHED[@]}" || true
    fi
}

# Starts service NAME unless it runs already.
start_service() {
    local name=$1 address pid
    local pidfile=$RUN_DIR/$name.pid logfile=$LOG_DIR/$name.log
    if pid=$(live_pid "$pidfile" "$(service_pattern "$name")"); then
        log "$name is already running (pid $pid)"
        return 0
    fi
    for address in "$(service_address "$name")" "$(service_socket_address "$name")"; do
        if [[ -n $address ]] && port_open "$(address_port "$address")"; then
            die "$address is already in use by another process; stop it or set the address" \
                "variables (MERIDIAN_COMMAND_ADDR, MERIDIAN_QUERY_ADDR, MERIDIAN_QUERY_ADDR_2," \
                "MERIDIAN_SOCKET_ADDR, MERIDIAN_SOCKET_ADDR_2)"
        fi
    done
    local command_line=("$TARGET_DIR/$PROFILE/$(service_binary "$name")")
    if [[ $name == query-service-2 ]]; then
        command_line=(env "MERIDIAN_QUERY_ADDR=$QUERY_ADDR_2" "MERIDIAN_SOCKET_ADDR=$SOCKET_ADDR_2"
            "${command_line[@]}")
    fi
    start_background "$REPO_ROOT" "$logfile" "$pidfile" "${command_line[@]}"
    LAUNCHED+=("$name")
    log "started $name (pid $(<"$pidfile")), log: $(display_path "$logfile")"
}

# Waits until GET /healthz of service NAME returns 200 and its Socket.IO port, if it has
# one, accepts connections, failing with the end of its log when the process exits or
# WAIT_SECS pass.
wait_for_health() {
    local name=$1 address socket_address
    address=$(service_address "$name")
    socket_address=$(service_socket_address "$name")
    local logfile=$LOG_DIR/$name.log deadline=$((SECONDS + WAIT_SECS))
    until http_ok "http://$address/healthz"; do
        if ! live_pid "$RUN_DIR/$name.pid" "$(service_pattern "$name")" >/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "$name exited during start; see $(display_path "$logfile")"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$logfile" >&2 || true
            die "GET http://$address/healthz did not return 200 within ${WAIT_SECS} s;" \
                "see $(display_path "$logfile")"
        fi
        sleep 0.2
    done
    if [[ -n $socket_address ]]; then
        wait_for_port "$name (Socket.IO)" "$(address_port "$socket_address")" \
            "$((deadline > SECONDS ? deadline - SECONDS : 1))" "$RUN_DIR/$name.pid" \
            "$(service_pattern "$name")" "$logfile"
        log "$name is healthy at http://$address (Socket.IO at http://$socket_address)"
    else
        log "$name is healthy at http://$address"
    fi
}

# Creates the local master key file on the first start. With MERIDIAN_KEY_PROVIDER=kms the
# data keys are wrapped by KMS instead and no file is needed.
ensure_master_key() {
    [[ ${MERIDIAN_KEY_PROVIDER:-local} == local ]] || return 0
    (cd "$REPO_ROOT" && "$TARGET_DIR/$PROFILE/meridian-keys" init --if-missing) ||
        die "could not create the master key file; see the message above"
}

# Creates the key file that signs access tokens on the first start.
ensure_token_keys() {
    (cd "$REPO_ROOT" && "$TARGET_DIR/$PROFILE/meridian-token-keys" init --if-missing) ||
        die "could not create the token key file; see the message above"
}

# Writes a random admin password to ADMIN_PASSWORD_FILE, readable only by its owner, unless
# the file exists. The password is never printed.
ensure_admin_password() {
    if [[ -n ${MERIDIAN_ADMIN_PASSWORD:-} ]]; then
        die "MERIDIAN_ADMIN_PASSWORD is set, but these scripts pass the password to the" \
            "importer as a file: unset it and write the password to" \
            "$(display_path "$ADMIN_PASSWORD_FILE") (or point MERIDIAN_ADMIN_PASSWORD_FILE at a file)"
    fi
    if [[ -e $ADMIN_PASSWORD_FILE ]]; then
        [[ -s $ADMIN_PASSWORD_FILE && -r $ADMIN_PASSWORD_FILE ]] ||
            die "the admin password file $(display_path "$ADMIN_PASSWORD_FILE") is empty or" \
                "unreadable; delete it to have a new password generated"
        return 0
    fi
    local password
    # 32 letters and digits from 32 random bytes: about 190 bits.
    password=$(head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | cut -c 1-32)
    mkdir -p "$(dirname "$ADMIN_PASSWORD_FILE")"
    (umask 077 && printf '%s' "$password" >"$ADMIN_PASSWORD_FILE.tmp") ||
        die "could not write $(display_path "$ADMIN_PASSWORD_FILE")"
    mv "$ADMIN_PASSWORD_FILE.tmp" "$ADMIN_PASSWORD_FILE"
    log "created the password of $ADMIN_EMAIL in $(display_path "$ADMIN_PASSWORD_FILE") (mode 0600)"
}

start_services() {
    check_stack
    check_binaries
    ensure_master_key
    ensure_token_keys
    ensure_admin_password
    mkdir -p "$LOG_DIR" "$RUN_DIR"
    trap stop_launched_on_failure EXIT

    start_service command-service
    wait_for_health command-service

    local name
    for name in outbox-relay projection-workers query-service query-service-2; do
        start_service "$name"
    done
    wait_for_health query-service
    wait_for_health query-service-2

    # Give workers started by this run a moment to fail on a bad connection setting.
    if [[ " ${LAUNCHED[*]} " == *" outbox-relay "* || " ${LAUNCHED[*]} " == *" projection-workers "* ]]; then
        sleep "$SETTLE_SECS"
    fi
    for name in outbox-relay projection-workers; do
        if ! live_pid "$RUN_DIR/$name.pid" "$(service_pattern "$name")" >/dev/null; then
            tail -n 20 "$LOG_DIR/$name.log" >&2 || true
            die "$name exited during start; see $(display_path "$LOG_DIR/$name.log")"
        fi
    done
    trap - EXIT
    log "all services are running: command API http://$COMMAND_ADDR," \
        "query API and dashboard http://$QUERY_ADDR and http://$QUERY_ADDR_2," \
        "Socket.IO http://$SOCKET_ADDR and http://$SOCKET_ADDR_2;" \
        "admin $ADMIN_EMAIL, password in $(display_path "$ADMIN_PASSWORD_FILE")"
}

# Stops the named services at once: each gets SIGTERM, then SIGKILL after STOP_GRACE_SECS.
stop_services() {
    local name pid failed=0 stoppers=()
    for name in "$@"; do
        stop_process "$name" "$RUN_DIR/$name.pid" "$(service_pattern "$name")" \
            "$STOP_GRACE_SECS" &
        stoppers+=("$!")
    done
    for pid in "${stoppers[@]}"; do
        wait "$pid" || failed=1
    done
    ((failed == 0)) || die "some services did not stop, see the messages above"
}

# Prints one line per service and returns 3 when any of them is down.
status_services() {
    local name address socket_address pid state down=0
    printf '%-19s %-16s %-16s %s\n' SERVICE ADDRESS SOCKET.IO STATE
    for name in "${SERVICES[@]}"; do
        address=$(service_address "$name")
        socket_address=$(service_socket_address "$name")
        if ! pid=$(live_pid "$RUN_DIR/$name.pid" "$(service_pattern "$name")"); then
            state="DOWN"
            down=1
        elif [[ -n $address ]] && ! http_ok "http://$address/healthz"; then
            state="UNHEALTHY (pid $pid, GET /healthz failed, log $(display_path "$LOG_DIR/$name.log"))"
            down=1
        elif [[ -n $socket_address ]] && ! port_open "$(address_port "$socket_address")"; then
            state="UNHEALTHY (pid $pid, Socket.IO port closed, log $(display_path "$LOG_DIR/$name.log"))"
            down=1
        else
            state="up (pid $pid, log $(display_path "$LOG_DIR/$name.log"))"
        fi
        printf '%-19s %-16s %-16s %s\n' "$name" "${address:--}" "${socket_address:--}" "$state"
    done
    return $((down * 3))
}

main() {
    (($# >= 1)) || usage
    local command=$1
    shift
    PROFILE=release
    while (($# > 0)); do
        case $1 in
        --profile)
            (($# >= 2)) || usage
            PROFILE=$2
            shift 2
            ;;
        --profile=*)
            PROFILE=${1#--profile=}
            shift
            ;;
        *) usage ;;
        esac
    done
    [[ $PROFILE == release || $PROFILE == debug ]] ||
        die "--profile must be release or debug, got '$PROFILE'"

    case $command in
    start) start_services ;;
    stop) stop_services "${SERVICES[@]}" ;;
    status) status_services ;;
    *) usage ;;
    esac
}

main "$@"
