# Functions shared by infra/stack.sh, infra/services.sh, infra/demo.sh and infra/import.sh.
# Sourcing this file sets REPO_ROOT, STACK_DIR, LOG_DIR, RUN_DIR, COMMAND_ADDR, QUERY_ADDR,
# QUERY_ADDR_2, SOCKET_ADDR, SOCKET_ADDR_2, ADMIN_EMAIL, ADMIN_PASSWORD_FILE and TARGET_DIR.
# The scripts that source this file use its variables, hence SC2034 (unused variable) is off.
# shellcheck shell=bash disable=SC2034

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STACK_DIR=${MERIDIAN_STACK_DIR:-$REPO_ROOT/.stack}
LOG_DIR=$STACK_DIR/logs
RUN_DIR=$STACK_DIR/run
# Addresses of the HTTP services, as the services read them.
COMMAND_ADDR=${MERIDIAN_COMMAND_ADDR:-127.0.0.1:8080}
QUERY_ADDR=${MERIDIAN_QUERY_ADDR:-127.0.0.1:8081}
# The second query-service replica, which infra/services.sh starts beside the first.
QUERY_ADDR_2=${MERIDIAN_QUERY_ADDR_2:-127.0.0.1:8082}
# Socket.IO addresses of the two query-service replicas.
SOCKET_ADDR=${MERIDIAN_SOCKET_ADDR:-127.0.0.1:8091}
SOCKET_ADDR_2=${MERIDIAN_SOCKET_ADDR_2:-127.0.0.1:8092}
# The admin account that the command service creates at start, and the file with its
# password, which infra/services.sh generates. The importer and the demo log in as it.
ADMIN_EMAIL=${MERIDIAN_ADMIN_EMAIL:-admin@meridian.local}
ADMIN_PASSWORD_FILE=${MERIDIAN_ADMIN_PASSWORD_FILE:-$STACK_DIR/keys/admin-password}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
# File descriptor of the lock that infra/stack.sh takes. Background servers must not inherit it,
# or the lock would stay taken while they run.
LOCK_FD=9

# Prints a progress line on stderr, prefixed with the calling script's name.
log() {
    printf '%s: %s\n' "$(basename "$0")" "$*" >&2
}

# Prints an error on stderr and exits with status 1.
die() {
    printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2
    exit 1
}

# Prints a path relative to the repository root when it lies inside it.
display_path() {
    local path=$1
    printf '%s\n' "${path#"$REPO_ROOT"/}"
}

# Succeeds when a TCP connection to 127.0.0.1:PORT is accepted within one second.
port_open() {
    local port=$1
    # shellcheck disable=SC2016 # $0 expands in the inner shell
    timeout 1 bash -c ': </dev/tcp/127.0.0.1/$0' "$port" 2>/dev/null
}

# Prints the pid stored in PIDFILE when that process is alive and its command line
# contains PATTERN (so a pid reused by an unrelated process does not count).
live_pid() {
    local pidfile=$1 pattern=$2 pid
    [[ -s $pidfile ]] || return 1
    pid=$(<"$pidfile")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$pattern" || return 1
    printf '%s\n' "$pid"
}

# Starts COMMAND... in the background in its own session, from WORKDIR, appending its output
# to LOGFILE and writing its pid to PIDFILE. Its own session keeps a Ctrl-C in the
# terminal from reaching it, so `make down` decides when it stops.
start_background() {
    local workdir=$1 logfile=$2 pidfile=$3
    shift 3
    mkdir -p "$(dirname "$logfile")" "$(dirname "$pidfile")"
    rm -f "$pidfile"
    printf -- '--- started %s: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$logfile"
    (
        eval "exec $LOCK_FD>&-"
        cd "$workdir" || exit 1
        # Output goes to a file, so ask for no ANSI colors (tracing-subscriber honors NO_COLOR).
        export NO_COLOR=${NO_COLOR:-1}
        # The inner shell writes its own pid, then becomes COMMAND through exec.
        # shellcheck disable=SC2016 # $$, $0 and $@ expand in the inner shell
        exec setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" >>"$logfile" 2>&1 </dev/null
    ) &
    local deadline=$((SECONDS + 5))
    until [[ -s $pidfile ]]; do
        ((SECONDS < deadline)) || die "no pid file $(display_path "$pidfile") 5 s after starting $1"
        sleep 0.05
    done
}

# Waits until 127.0.0.1:PORT accepts connections, for at most TIMEOUT seconds, and fails
# naming NAME and LOGFILE when the process of PIDFILE exits or the time runs out.
wait_for_port() {
    local name=$1 port=$2 timeout=$3 pidfile=$4 pattern=$5 logfile=$6
    local deadline=$((SECONDS + timeout))
    until port_open "$port"; do
        if ! live_pid "$pidfile" "$pattern" >/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "$name exited before accepting connections on 127.0.0.1:$port; see $(display_path "$logfile")"
        fi
        if ((SECONDS >= deadline)); then
            tail -n 20 "$logfile" >&2 || true
            die "$name did not accept connections on 127.0.0.1:$port within ${timeout} s; see $(display_path "$logfile")"
        fi
        sleep 0.1
    done
}

# Sends SIGTERM to the process of PIDFILE, waits up to GRACE seconds, then sends SIGKILL.
# Does nothing when no live process matching PATTERN is recorded there.
stop_process() {
    local name=$1 pidfile=$2 pattern=$3 grace=$4 pid
    if ! pid=$(live_pid "$pidfile" "$pattern"); then
        rm -f "$pidfile"
        log "$name is not running"
        return 0
    fi
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + grace))
    while kill -0 "$pid" 2>/dev/null; do
        if ((SECONDS >= deadline)); then
            log "$name (pid $pid) still running ${grace} s after SIGTERM; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.2
            break
        fi
        sleep 0.1
    done
    rm -f "$pidfile"
}

# Waits up to TIMEOUT seconds until nothing listens on 127.0.0.1:PORT any more.
wait_for_port_closed() {
    local name=$1 port=$2 timeout=$3
    local deadline=$((SECONDS + timeout))
    while port_open "$port"; do
        ((SECONDS < deadline)) || die "127.0.0.1:$port is still open ${timeout} s after $name stopped"
        sleep 0.1
    done
}

# Succeeds when GET URL returns a 2xx status within two seconds.
http_ok() {
    local url=$1
    if command -v curl >/dev/null; then
        curl -fsS --max-time 2 -o /dev/null "$url" 2>/dev/null
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
            "$url" 2>/dev/null
    fi
}

# Prints the port of an address such as 127.0.0.1:8080.
address_port() {
    local address=$1
    printf '%s\n' "${address##*:}"
}
