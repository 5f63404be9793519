#!/usr/bin/env bash
# An MLflow tracking server in the background, for SLURM jobs and parallel workers (one writer to the store).
#
#   slurm/mlflow-server.sh start  [options]   start it, wait for /health, print `export MLFLOW_TRACKING_URI=...`
#   slurm/mlflow-server.sh stop   [options]   stop it (nothing to do when it is not running)
#   slurm/mlflow-server.sh status [options]   exit 0 when running, 3 when not
#
# Options (stop and status need the same --port or --run-dir as start):
#   --host HOST         interface to bind (default 127.0.0.1; 0.0.0.0 for jobs on other nodes)
#   --port PORT         default 5001
#   --backend URI       sqlite:///<absolute path>.db or postgresql://... (default sqlite:///<run dir>/mlflow.db)
#   --artifacts DIR     where the server stores artifacts it proxies (default <run dir>/artifacts)
#   --run-dir DIR       pid file, log and default stores (default /tmp/wavebench-mlflow-<port>)
#   --workers N         server worker processes (default 2)
#   -- ARGS...          passed on to `mlflow server`
# Environment: WAVEBENCH_PYTHON (default <repo>/.venv/bin/python, else `mlflow` on PATH),
#              WAVEBENCH_MLFLOW_TIMEOUT (seconds to wait for /health, default 180).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TIMEOUT="${WAVEBENCH_MLFLOW_TIMEOUT:-180}"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}" >&2; exit 2; }
log() { echo "[mlflow-server] $*" >&2; }
die() { echo "[mlflow-server] error: $*" >&2; exit 1; }

COMMAND="${1:-}"
[[ "$COMMAND" =~ ^(start|stop|status)$ ]] || usage
shift
HOST=127.0.0.1
PORT=5001
BACKEND=""
ARTIFACTS=""
RUN_DIR=""
WORKERS=2
EXTRA=()
while (($#)); do
    case "$1" in
        --host) HOST="${2:?--host needs a value}"; shift 2 ;;
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        --backend) BACKEND="${2:?--backend needs a value}"; shift 2 ;;
        --artifacts) ARTIFACTS="${2:?--artifacts needs a value}"; shift 2 ;;
        --run-dir) RUN_DIR="${2:?--run-dir needs a value}"; shift 2 ;;
        --workers) WORKERS="${2:?--workers needs a value}"; shift 2 ;;
        --host=* | --port=* | --backend=* | --artifacts=* | --run-dir=* | --workers=*)
            set -- "${1%%=*}" "${1#*=}" "${@:2}" ;;
        --) shift; EXTRA=("$@"); break ;;
        -h | --help) usage ;;
        *) die "unknown option '$1' (see $0 --help)" ;;
    esac
done
[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number, got '$PORT'"
RUN_DIR="${RUN_DIR:-/tmp/wavebench-mlflow-$PORT}"
PID_FILE="$RUN_DIR/server.pid"
LOG_FILE="$RUN_DIR/server.log"

# Clients connect to the bound address; on 0.0.0.0 / :: they use this machine's name.
case "$HOST" in
    0.0.0.0 | :: | "[::]") CLIENT_HOST="$(hostname -f 2>/dev/null || hostname)" ;;
    *) CLIENT_HOST="$HOST" ;;
esac
URI="http://$CLIENT_HOST:$PORT"
PROBE_HOST="$HOST"
[[ "$HOST" == 0.0.0.0 || "$HOST" == :: || "$HOST" == "[::]" ]] && PROBE_HOST=127.0.0.1

running() {  # the pid in the pid file is alive and is an mlflow server
    local pid
    [[ -s "$PID_FILE" ]] || return 1
    pid="$(<"$PID_FILE")"
    [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'mlflow.* server'
}

healthy() { curl -fsS --max-time 3 "http://$PROBE_HOST:$PORT/health" >/dev/null 2>&1; }

port_taken() { (exec 3<>"/dev/tcp/$PROBE_HOST/$PORT") 2>/dev/null; }

mlflow_command() {
    local py="${WAVEBENCH_PYTHON:-$ROOT/.venv/bin/python}"
    if [[ -x "$py" ]] && "$py" -c 'import mlflow' 2>/dev/null; then
        MLFLOW=("$py" -m mlflow)
    elif command -v mlflow >/dev/null; then
        MLFLOW=(mlflow)
    else
        die "no MLflow: neither $py with mlflow installed (make setup) nor 'mlflow' on PATH"
    fi
}

cmd_start() {
    if running; then
        healthy || log "warning: the server ($(<"$PID_FILE")) is running but /health does not answer yet"
        log "already running (pid $(<"$PID_FILE"), log $LOG_FILE)"
        echo "export MLFLOW_TRACKING_URI=$URI"
        return 0
    fi
    port_taken && die "port $PORT on $PROBE_HOST is already in use by another process"
    mlflow_command
    mkdir -p "$RUN_DIR"
    BACKEND="${BACKEND:-sqlite:///$(cd "$RUN_DIR" && pwd)/mlflow.db}"
    ARTIFACTS="${ARTIFACTS:-$RUN_DIR/artifacts}"
    mkdir -p "$ARTIFACTS"
    ARTIFACTS="$(cd "$ARTIFACTS" && pwd)"

    local args=(server --host "$HOST" --port "$PORT" --workers "$WORKERS"
        --backend-store-uri "$BACKEND" --serve-artifacts --artifacts-destination "$ARTIFACTS")
    # MLflow 3 rejects requests whose Host header is not local or a private IP: when bound beyond loopback,
    # also accept this machine's names so jobs on other nodes can use $URI.
    local extra=" ${EXTRA[*]:-} "
    if [[ "$HOST" != 127.0.0.1 && "$HOST" != localhost && "$extra" != *" --allowed-hosts"* ]]; then
        local names="localhost,localhost:*,127.0.0.1,127.0.0.1:*,10.*,192.168.*,172.*"
        local n
        for n in "$HOST" "$CLIENT_HOST" "$(hostname)" "$(hostname -s)"; do
            [[ "$n" == 0.0.0.0 || "$n" == :: || ",$names," == *",$n,"* ]] || names="$names,$n,$n:*"
        done
        args+=(--allowed-hosts "$names")
    fi
    args+=("${EXTRA[@]}")

    {
        echo "# $(date -Is) start"
        printf '%q ' "${MLFLOW[@]}" "${args[@]}"
        echo
    } >>"$LOG_FILE"
    # setsid: the server, its uvicorn supervisor and workers form one process group that `stop` ends.
    # No telemetry (offline machines, nothing leaves 127.0.0.1); no GenAI job runner (8 extra processes).
    MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true \
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}" \
        setsid "${MLFLOW[@]}" "${args[@]}" </dev/null >>"$LOG_FILE" 2>&1 &
    echo $! >"$PID_FILE"
    printf 'MLFLOW_TRACKING_URI=%s\nBACKEND=%s\nARTIFACTS=%s\n' "$URI" "$BACKEND" "$ARTIFACTS" >"$RUN_DIR/server.env"

    local t0=$SECONDS
    until healthy; do
        if ! running; then
            tail -n 30 "$LOG_FILE" >&2
            rm -f "$PID_FILE"
            die "the server exited during start-up (log above, $LOG_FILE)"
        fi
        if ((SECONDS - t0 >= TIMEOUT)); then
            tail -n 30 "$LOG_FILE" >&2
            cmd_stop
            die "no answer from http://$PROBE_HOST:$PORT/health after $TIMEOUT s (log above, $LOG_FILE)"
        fi
        sleep 0.5
    done
    log "started (pid $(<"$PID_FILE"), $((SECONDS - t0)) s; backend $BACKEND; artifacts $ARTIFACTS; log $LOG_FILE)"
    echo "export MLFLOW_TRACKING_URI=$URI"
}

cmd_stop() {
    if ! running; then
        rm -f "$PID_FILE"
        log "not running"
        return 0
    fi
    local pid i
    pid="$(<"$PID_FILE")"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 75; i++)); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 -- "-$pid" 2>/dev/null; then
        log "server processes ignored SIGTERM; sending SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
    log "stopped (pid $pid)"
}

cmd_status() {
    if running; then
        local state=healthy
        healthy || state="not answering /health"
        echo "running: pid $(<"$PID_FILE"), $URI ($state), log $LOG_FILE"
        [[ -s "$RUN_DIR/server.env" ]] && sed 's/^/  /' "$RUN_DIR/server.env"
        return 0
    fi
    echo "stopped"
    return 3
}

"cmd_$COMMAND"
