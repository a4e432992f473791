#!/usr/bin/env bash
# Installs and runs the local servers that Meridian needs besides the system PostgreSQL and
# Redis: tansu (Kafka API), nx-27017 (MongoDB wire protocol) and moto (mock of the AWS APIs).
#
# Usage: infra/stack.sh install|start|stop|status|reset
#
#   install  install tansu with cargo when it is missing, the Python servers into a venv, and
#            Debian's Chromium for the browser test (infra/chromium.sh)
#   start    install what is missing, then start every server that is not running yet
#   stop     stop the servers this script started (never PostgreSQL or Redis)
#   status   print each server's state; exit status 3 when one of them is down
#   reset    stop the servers, delete their data and logs (the venv stays), and drop the
#            PostgreSQL database of MERIDIAN_DATABASE_URL; stop the services first
#
# Every server listens on 127.0.0.1. Data, logs and pid files live under MERIDIAN_STACK_DIR
# (default: .stack at the repository root). The events themselves live in the system
# PostgreSQL, so deleting .stack alone leaves the database and the broker out of step:
# use `reset` to delete both.
#
# Environment:
#   MERIDIAN_STACK_DIR        data, logs and pid files (default: <repository>/.stack)
#   MERIDIAN_KAFKA_PORT       tansu port (default: 9092)
#   MERIDIAN_MONGODB_PORT     nx-27017 port (default: 27017)
#   MERIDIAN_MOTO_PORT        moto_server port (default: 4566)
#   MERIDIAN_POSTGRES_PORT    port of the system PostgreSQL to check (default: 5432)
#   MERIDIAN_REDIS_PORT       port of the system Redis to check (default: 6379)
#   MERIDIAN_STACK_WAIT_SECS  seconds to wait for each server to listen (default: 30)
#   MERIDIAN_DATABASE_URL     database that reset drops
#                             (default: postgres://postgres@127.0.0.1:5432/meridian)
set -euo pipefail

# shellcheck source=infra/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TANSU_VERSION=0.6.0
TANSU_FEATURES=dynostore,libsql,postgres
KAFKA_PORT=${MERIDIAN_KAFKA_PORT:-9092}
MONGODB_PORT=${MERIDIAN_MONGODB_PORT:-27017}
MOTO_PORT=${MERIDIAN_MOTO_PORT:-4566}
POSTGRES_PORT=${MERIDIAN_POSTGRES_PORT:-5432}
REDIS_PORT=${MERIDIAN_REDIS_PORT:-6379}
WAIT_SECS=${MERIDIAN_STACK_WAIT_SECS:-30}
VENV_DIR=$STACK_DIR/venv
REQUIREMENTS=$REPO_ROOT/infra/requirements.txt
# Seconds to wait for another infra/stack.sh that has the lock. It may be building tansu,
# which took 12 to 15 minutes on a 2-core machine.
LOCK_WAIT_SECS=2400

# Servers this script manages: name, port, and a string their command line contains.
MANAGED_SERVERS=(
    "tansu $KAFKA_PORT tansu broker"
    "nx-27017 $MONGODB_PORT nx-27017"
    "moto $MOTO_PORT moto_server"
)

usage() {
    sed -n '5,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

check_settings() {
    local name value
    for name in KAFKA_PORT MONGODB_PORT MOTO_PORT POSTGRES_PORT REDIS_PORT; do
        value=${!name}
        if ! [[ $value =~ ^[0-9]+$ ]] || ((value < 1 || value > 65535)); then
            die "MERIDIAN_$name must be a TCP port between 1 and 65535, got '$value'"
        fi
    done
    [[ $WAIT_SECS =~ ^[0-9]+$ ]] ||
        die "MERIDIAN_STACK_WAIT_SECS must be a whole number of seconds, got '$WAIT_SECS'"
}

# Takes the stack lock so that two concurrent runs do not both install or start a server.
take_lock() {
    mkdir -p "$STACK_DIR" "$LOG_DIR" "$RUN_DIR"
    eval "exec $LOCK_FD>\"\$STACK_DIR/stack.lock\""
    if ! flock -n "$LOCK_FD"; then
        log "waiting for another infra/stack.sh to finish (lock $(display_path "$STACK_DIR/stack.lock"))"
        flock -w "$LOCK_WAIT_SECS" "$LOCK_FD" ||
            die "timed out after ${LOCK_WAIT_SECS} s waiting for the lock $(display_path "$STACK_DIR/stack.lock")"
    fi
}

postgres_ready() {
    if command -v pg_isready >/dev/null; then
        pg_isready -q -h 127.0.0.1 -p "$POSTGRES_PORT"
    else
        port_open "$POSTGRES_PORT"
    fi
}

redis_ready() {
    if command -v redis-cli >/dev/null; then
        [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]
    else
        port_open "$REDIS_PORT"
    fi
}

# Fails when the system PostgreSQL or Redis is not reachable, saying how to start it.
check_system_servers() {
    postgres_ready || die "PostgreSQL is not accepting connections on 127.0.0.1:$POSTGRES_PORT." \
        "This script does not manage it; start it with" \
        "'pg_ctlcluster --skip-systemctl-redirect 15 main start' (as root) and retry."
    redis_ready || die "Redis on 127.0.0.1:$REDIS_PORT did not reply PONG to PING." \
        "This script does not manage it; start it with" \
        "'redis-server --daemonize yes --bind 127.0.0.1 --port $REDIS_PORT --save \"\" --appendonly no'" \
        "and retry."
}

# Sends a Metadata request to the Kafka broker on 127.0.0.1:PORT. Returns 0 when it responds,
# 1 when it closes the connection without a response, and 2 when it is still silent after
# 5 s. An open port is not enough, because after a panic in its storage task tansu 0.6.0 keeps
# accepting connections but closes each one at once. A slow response is no such failure:
# tansu serves storage requests one at a time, so it can fall seconds behind under load.
kafka_responds() {
    local port=$1
    python3 - "$port" 2>/dev/null <<'PYTHON'
import socket
import struct
import sys

client_id = b"meridian-stack-check"
# Request header v1 (api key 3 = Metadata, version 1, correlation id 1, client id), then a
# Metadata v1 body whose null topic array (-1) requests every topic.
request = struct.pack(">hhih", 3, 1, 1, len(client_id)) + client_id + struct.pack(">i", -1)
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as connection:
        connection.sendall(struct.pack(">i", len(request)) + request)
        response = b""
        while len(response) < 8:
            chunk = connection.recv(8 - len(response))
            if not chunk:
                sys.exit(1)
            response += chunk
except socket.timeout:
    sys.exit(2)
except OSError:
    sys.exit(1)
size, correlation_id = struct.unpack(">ii", response)
sys.exit(0 if size >= 4 and correlation_id == 1 else 1)
PYTHON
}

# Returns 0 when server NAME on PORT responds to requests, 1 when it does not, and 2 when it
# has not responded yet (only the Kafka check can tell this case apart).
server_responds() {
    local name=$1 port=$2
    case $name in
    tansu) kafka_responds "$port" ;;
    *) port_open "$port" ;;
    esac
}

# Waits up to WAIT_SECS until server NAME on PORT responds to requests.
wait_for_response() {
    local name=$1 port=$2
    local deadline=$((SECONDS + WAIT_SECS))
    until server_responds "$name" "$port"; do
        ((SECONDS < deadline)) || die "$name accepts connections on 127.0.0.1:$port but did" \
            "not respond to requests within ${WAIT_SECS} s; see $(display_path "$LOG_DIR/$name.log")"
        sleep 0.2
    done
}

# Prints the path of the tansu binary, or fails when it is not installed.
tansu_path() {
    local cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin/tansu
    if command -v tansu 2>/dev/null; then
        return 0
    elif [[ -x $cargo_bin ]]; then
        printf '%s\n' "$cargo_bin"
    else
        return 1
    fi
}

install_tansu() {
    if tansu_path >/dev/null; then
        return 0
    fi
    command -v cargo >/dev/null || die "cargo is missing from PATH, and installing tansu needs it"
    local install_log=$LOG_DIR/tansu-install.log
    log "installing tansu $TANSU_VERSION with cargo (12 to 15 minutes on 2 cores); log: $(display_path "$install_log")"
    if ! cargo install tansu --locked --version "$TANSU_VERSION" \
        --features "$TANSU_FEATURES" >"$install_log" 2>&1; then
        tail -n 30 "$install_log" >&2
        die "cargo install tansu failed; see $(display_path "$install_log")"
    fi
    tansu_path >/dev/null || die "cargo installed tansu, but it is neither on PATH nor in ~/.cargo/bin"
}

# Creates the virtualenv and installs infra/requirements.txt into it, unless the venv already
# contains exactly that file's requirements.
install_python_servers() {
    local installed=$VENV_DIR/meridian-requirements.txt
    if [[ -f $installed ]] && cmp -s "$REQUIREMENTS" "$installed"; then
        return 0
    fi
    command -v python3 >/dev/null || die "python3 is missing from PATH, and nx-27017 and moto need it"
    if [[ ! -x $VENV_DIR/bin/python ]]; then
        log "creating the Python virtualenv $(display_path "$VENV_DIR")"
        python3 -m venv "$VENV_DIR" || die "python3 -m venv $(display_path "$VENV_DIR") failed"
    fi
    local install_log=$LOG_DIR/pip-install.log
    log "installing nx-27017 and moto into $(display_path "$VENV_DIR") (under a minute); log: $(display_path "$install_log")"
    if ! "$VENV_DIR/bin/python" -m pip install --disable-pip-version-check --no-input \
        -r "$REQUIREMENTS" >"$install_log" 2>&1; then
        tail -n 30 "$install_log" >&2
        die "pip install -r infra/requirements.txt failed; see $(display_path "$install_log")"
    fi
    cp "$REQUIREMENTS" "$installed"
}

install_all() {
    install_tansu
    install_python_servers
    "$REPO_ROOT/infra/chromium.sh"
}

# Names of the servers that this run of start_all launched, so it waits only for those.
LAUNCHED=()

# Starts server NAME on PORT from WORKDIR unless it runs already.
start_server() {
    local name=$1 port=$2 pattern=$3 workdir=$4
    shift 4
    local pidfile=$RUN_DIR/$name.pid logfile=$LOG_DIR/$name.log pid
    if pid=$(live_pid "$pidfile" "$pattern"); then
        wait_for_port "$name" "$port" "$WAIT_SECS" "$pidfile" "$pattern" "$logfile"
        local responds=0
        server_responds "$name" "$port" || responds=$?
        if ((responds == 0)); then
            log "$name is already running on 127.0.0.1:$port (pid $pid)"
            return 0
        elif ((responds == 2)); then
            log "warning: $name (pid $pid) on 127.0.0.1:$port is running but slow to respond" \
                "(busy or stuck); leaving it running. Its log: $(display_path "$logfile")"
            return 0
        fi
        log "warning: $name (pid $pid) accepts connections on 127.0.0.1:$port but closes" \
            "them without a response; restarting it. Its log: $(display_path "$logfile")"
        stop_process "$name" "$pidfile" "$pattern" 10
        wait_for_port_closed "$name" "$port" 10
    elif port_open "$port"; then
        local foreign_responds=0
        server_responds "$name" "$port" || foreign_responds=$?
        if ((foreign_responds == 1)); then
            die "127.0.0.1:$port accepts connections but does not respond as $name, and this" \
                "script did not start that process; stop it or choose another port"
        fi
        log "warning: 127.0.0.1:$port already accepts connections, but not from a $name" \
            "started by this script; using that server as $name"
        return 0
    fi
    mkdir -p "$workdir"
    start_background "$workdir" "$logfile" "$pidfile" "$@"
    LAUNCHED+=("$name")
}

start_all() {
    local tansu name port pattern entry
    tansu=$(tansu_path)

    # tansu resolves a sqlite:// path against its working directory.
    start_server tansu "$KAFKA_PORT" "tansu broker" "$STACK_DIR/tansu" \
        "$tansu" broker \
        --listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --advertised-listener-url "tcp://127.0.0.1:$KAFKA_PORT" \
        --storage-engine sqlite://tansu.db

    # --data-dir keeps one SQLite file per MongoDB database. With a single --db file,
    # nx-27017 0.8.1 drops every database when a client drops one, so the tests' cleanup
    # would wipe the analytics data. Its log lines also go to stderr, which start_background
    # appends to the log file, so --log-file is /dev/null to avoid writing each line twice.
    # Its own pid file is separate from ours because it refuses to start while the pid it
    # finds in that file is alive.
    # nx-27017 0.8.1 keeps the file of a dropped database and lists that database again after
    # a restart, so delete the files of test databases while the server is down. Tests name
    # their databases meridian_test_<random> and drop them when they finish.
    if ! live_pid "$RUN_DIR/nx-27017.pid" nx-27017 >/dev/null && ! port_open "$MONGODB_PORT"; then
        rm -f "$STACK_DIR"/mongo/meridian_test_*.db "$STACK_DIR"/mongo/meridian_test_*.db-*
    fi
    start_server nx-27017 "$MONGODB_PORT" nx-27017 "$STACK_DIR/mongo" \
        "$VENV_DIR/bin/nx-27017" --host 127.0.0.1 -p "$MONGODB_PORT" \
        --data-dir "$STACK_DIR/mongo" --log-file /dev/null \
        --pid-file "$STACK_DIR/mongo/nx-27017.pid"

    start_server moto "$MOTO_PORT" moto_server "$STACK_DIR/moto" \
        "$VENV_DIR/bin/moto_server" -H 127.0.0.1 -p "$MOTO_PORT"

    for entry in "${MANAGED_SERVERS[@]}"; do
        read -r name port pattern <<<"$entry"
        if [[ " ${LAUNCHED[*]} " == *" $name "* ]]; then
            wait_for_port "$name" "$port" "$WAIT_SECS" "$RUN_DIR/$name.pid" "$pattern" \
                "$LOG_DIR/$name.log"
            wait_for_response "$name" "$port"
            log "started $name on 127.0.0.1:$port (pid $(<"$RUN_DIR/$name.pid"))"
        fi
    done
}

# Stops server NAME when this script started it and waits until its port is free, because
# tansu releases its port about a second after SIGTERM and a broker started on a taken port
# panics.
stop_server() {
    local name=$1 port=$2 pattern=$3
    if live_pid "$RUN_DIR/$name.pid" "$pattern" >/dev/null; then
        stop_process "$name" "$RUN_DIR/$name.pid" "$pattern" 10
        wait_for_port_closed "$name" "$port" 10
    else
        stop_process "$name" "$RUN_DIR/$name.pid" "$pattern" 10
    fi
}

# Stops every server at once, because each takes one to two seconds to exit after SIGTERM.
stop_all() {
    local name port pattern entry pid failed=0 stoppers=()
    for entry in "${MANAGED_SERVERS[@]}"; do
        read -r name port pattern <<<"$entry"
        stop_server "$name" "$port" "$pattern" &
        stoppers+=("$!")
    done
    for pid in "${stoppers[@]}"; do
        wait "$pid" || failed=1
    done
    ((failed == 0)) || die "some servers did not stop, see the messages above"
}

# Sets RESET_ADMIN_URL and RESET_DATABASE from MERIDIAN_DATABASE_URL, failing before anything
# is stopped when the name is one that reset must not drop.
resolve_database() {
    local url=${MERIDIAN_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/meridian} parts
    command -v psql >/dev/null || die "psql is missing from PATH, and reset needs it"
    parts=$(python3 - "$url" <<'PYTHON'
import sys
import urllib.parse

url = urllib.parse.urlsplit(sys.argv[1])
print(urllib.parse.urlunsplit(url._replace(path="/postgres")))
print(urllib.parse.unquote(url.path.lstrip("/")))
PYTHON
)
    RESET_ADMIN_URL=${parts%%$'\n'*}
    RESET_DATABASE=${parts#*$'\n'}
    [[ $RESET_DATABASE =~ ^[A-Za-z0-9_]+$ ]] ||
        die "reset drops only databases named with letters, digits and '_', got '$RESET_DATABASE'"
    case $RESET_DATABASE in
    postgres | template0 | template1)
        die "reset does not drop the system database '$RESET_DATABASE'"
        ;;
    esac
}

reset_all() {
    resolve_database
    stop_all
    log "dropping the PostgreSQL database $RESET_DATABASE"
    psql -X -q -v ON_ERROR_STOP=1 "$RESET_ADMIN_URL" \
        -c "DROP DATABASE IF EXISTS \"$RESET_DATABASE\" WITH (FORCE)" ||
        die "failed to drop the database $RESET_DATABASE"
    rm -rf "$STACK_DIR/tansu" "$STACK_DIR/mongo" "$STACK_DIR/moto" "$LOG_DIR" "$RUN_DIR"
    log "deleted the data and logs under $(display_path "$STACK_DIR"); the venv stays"
}

# Prints one line per server and returns 3 when any of them is down.
status_all() {
    local down=0 name port pattern entry pid state responds
    printf '%-11s %-17s %s\n' SERVER ADDRESS STATE
    if postgres_ready; then state="up (system server)"; else state="DOWN"; down=1; fi
    printf '%-11s %-17s %s\n' postgresql "127.0.0.1:$POSTGRES_PORT" "$state"
    if redis_ready; then state="up (system server)"; else state="DOWN"; down=1; fi
    printf '%-11s %-17s %s\n' redis "127.0.0.1:$REDIS_PORT" "$state"
    for entry in "${MANAGED_SERVERS[@]}"; do
        read -r name port pattern <<<"$entry"
        if pid=$(live_pid "$RUN_DIR/$name.pid" "$pattern"); then
            responds=0
            port_open "$port" && { server_responds "$name" "$port" || responds=$?; }
            if ! port_open "$port"; then
                state="STARTING (pid $pid, not listening yet)"
                down=1
            elif ((responds == 1)); then
                state="BROKEN (pid $pid, closes connections without a response;"
                state+=" infra/stack.sh start restarts it; log $(display_path "$LOG_DIR/$name.log"))"
                down=1
            elif ((responds == 2)); then
                state="SLOW (pid $pid, no response within 5 s; log $(display_path "$LOG_DIR/$name.log"))"
            else
                state="up (pid $pid, log $(display_path "$LOG_DIR/$name.log"))"
            fi
        elif port_open "$port"; then
            responds=0
            server_responds "$name" "$port" || responds=$?
            if ((responds == 1)); then
                state="BROKEN (not started by this script, closes connections without a response)"
                down=1
            else
                state="up (not started by this script)"
            fi
        else
            state="DOWN"
            down=1
        fi
        printf '%-11s %-17s %s\n' "$name" "127.0.0.1:$port" "$state"
    done
    return $((down * 3))
}

main() {
    [[ $# -eq 1 ]] || usage
    check_settings
    case $1 in
    install)
        take_lock
        install_all
        log "tansu: $(tansu_path); Python servers: $(display_path "$VENV_DIR")"
        ;;
    start)
        check_system_servers
        take_lock
        install_all
        start_all
        ;;
    stop)
        take_lock
        stop_all
        ;;
    status)
        status_all
        ;;
    reset)
        check_system_servers
        take_lock
        reset_all
        ;;
    *)
        usage
        ;;
    esac
}

main "$@"
