#!/usr/bin/env bash
# Start the local stack of a real deployment run, all on 127.0.0.1:
#   a Prefect server, the process work pool, the deployments of prefect.yaml, a process worker,
#   and with --mlflow an MLflow tracking server (sqlite store + artifact folder).
# PIDs, logs, the Prefect home (database, profiles) and env.sh live under the state folder (default out/stack/);
# nothing is written to ~/.prefect. Stop everything with deployments/stop-local-stack.sh.
#
# usage: deployments/start-local-stack.sh [--mlflow] [--no-worker] [--prefect-port N] [--mlflow-port N]
#                                         [--pool NAME] [--state DIR]
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${GANI_VENV_BIN:-$REPO/.venv/bin}"       # where prefect and mlflow are installed
STATE="$REPO/out/stack"
PREFECT_PORT=4200
MLFLOW_PORT=5000
POOL=gani-local                               # the work pool named in prefect.yaml
WITH_MLFLOW=0
WITH_WORKER=1

while [[ $# -gt 0 ]]; do
  case "$1" in
    --mlflow) WITH_MLFLOW=1 ;;
    --no-worker) WITH_WORKER=0 ;;
    --prefect-port) PREFECT_PORT="$2"; shift ;;
    --mlflow-port) MLFLOW_PORT="$2"; shift ;;
    --pool) POOL="$2"; shift ;;
    --state) STATE="$2"; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

mkdir -p "$STATE"
STATE="$(cd "$STATE" && pwd)"

# Everything below, and every process started here, sees these; env.sh gives the same to your shell.
cat > "$STATE/env.sh" <<EOF
# source this file to talk to the local stack started by deployments/start-local-stack.sh
export PREFECT_HOME="$STATE/prefect-home"
export PREFECT_API_URL="http://127.0.0.1:$PREFECT_PORT/api"
export GANI_REPO="$REPO"
export PYTHONPATH="$REPO\${PYTHONPATH:+:\$PYTHONPATH}"
EOF
# No telemetry: the settings of gani_core/telemetry.py, as export lines.
"$BIN/python" "$REPO/gani_core/telemetry.py" | sed 's/^/export /' >> "$STATE/env.sh"
if [[ $WITH_MLFLOW == 1 ]]; then
  echo "export MLFLOW_TRACKING_URI=\"http://127.0.0.1:$MLFLOW_PORT\"" >> "$STATE/env.sh"
fi
# shellcheck source=/dev/null
source "$STATE/env.sh"
# The server itself must not try to reach the API it is about to serve.
SERVER_ENV=(env -u PREFECT_API_URL)

alive() { [[ -f "$STATE/$1.pid" ]] && kill -0 "$(cat "$STATE/$1.pid")" 2>/dev/null; }

# start NAME CMD...: run CMD in its own session (so stop-local-stack.sh can stop its children too), log to NAME.log
start() {
  local name="$1"; shift
  if alive "$name"; then
    echo "$name: already running (pid $(cat "$STATE/$name.pid"))"
    return
  fi
  setsid "$@" > "$STATE/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/$name.pid"
  echo "$name: started (pid $!, log $STATE/$name.log)"
}

# wait_http NAME URL SECONDS: poll URL until it answers 200, or fail with the log's tail
wait_http() {
  local name="$1" url="$2" deadline=$((SECONDS + $3))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    if ! alive "$name"; then
      echo "$name exited; the end of $STATE/$name.log:" >&2; tail -n 30 "$STATE/$name.log" >&2; exit 1
    fi
    if (( SECONDS > deadline )); then
      echo "$name not healthy after $3 s at $url; see $STATE/$name.log" >&2; exit 1
    fi
    sleep 1
  done
  echo "$name: healthy at $url"
}

start server "${SERVER_ENV[@]}" "$BIN/prefect" server start --host 127.0.0.1 --port "$PREFECT_PORT"
if [[ $WITH_MLFLOW == 1 ]]; then
  mkdir -p "$STATE/mlflow/artifacts"
  start mlflow "$BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
    --backend-store-uri "sqlite:///$STATE/mlflow/mlflow.db" --artifacts-destination "$STATE/mlflow/artifacts"
fi
wait_http server "$PREFECT_API_URL/health" 120
if [[ $WITH_MLFLOW == 1 ]]; then
  wait_http mlflow "http://127.0.0.1:$MLFLOW_PORT/health" 120
fi

if "$BIN/prefect" work-pool inspect "$POOL" > /dev/null 2>&1; then
  echo "work pool $POOL: exists"
else
  "$BIN/prefect" work-pool create "$POOL" --type process > /dev/null
  echo "work pool $POOL: created (process)"
fi

echo "deploying prefect.yaml ..."
(cd "$REPO" && "$BIN/prefect" deploy --all --no-prompt) > "$STATE/deploy.log" 2>&1 \
  || { echo "prefect deploy failed; $STATE/deploy.log:" >&2; tail -n 40 "$STATE/deploy.log" >&2; exit 1; }
"$BIN/prefect" deployment ls

if [[ $WITH_WORKER == 1 ]]; then
  # The worker runs each flow run as a subprocess in the repo (prefect.yaml's pull step reads GANI_REPO).
  (cd "$REPO" && start worker "$BIN/prefect" worker start --pool "$POOL" --type process)
fi

cat <<EOF

Local stack is up (state, logs and PIDs in $STATE).
  Prefect UI:   http://127.0.0.1:$PREFECT_PORT
EOF
if [[ $WITH_MLFLOW == 1 ]]; then
  echo "  MLflow UI:    http://127.0.0.1:$MLFLOW_PORT   (flow runs log here: MLFLOW_TRACKING_URI in the worker's env)"
fi
cat <<EOF

Next:
  source $STATE/env.sh
  $BIN/prefect deployment run invert-dataset/default --param input_uri=$REPO/examples/photos \\
      --param output_uri=$REPO/out/runs/first --param checkpoint=builtin --watch
  $BIN/prefect deployment ls
  $REPO/deployments/stop-local-stack.sh --state $STATE
EOF
