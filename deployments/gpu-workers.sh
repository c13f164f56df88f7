#!/usr/bin/env bash
# A Dask cluster of GPU workers for invert-dataset: a scheduler and one worker process per GPU, each pinned to
# its GPU with CUDA_VISIBLE_DEVICES, running one task at a time (--nthreads 1) and advertising the resource
# GPU=1. Run the flow with `--param cluster='{"dask_address": "tcp://HOST:8786", "gpu": true}'`: each task then asks for
# one `GPU`, so no worker ever runs two inversions on its GPU at once. Needs only dask/distributed (no
# dask-cuda); with dask-cuda installed, `dask cuda worker tcp://HOST:8786 --resources GPU=1` does the same.
#
# usage: deployments/gpu-workers.sh start [--gpus N] [--host ADDR] [--port 8786] [--scheduler tcp://HOST:PORT]
#        deployments/gpu-workers.sh stop
#   --gpus N        workers to start, one per GPU 0..N-1 (default: the GPUs `nvidia-smi -L` lists)
#   --host ADDR     address the scheduler and workers listen on (default 127.0.0.1; a LAN address for a
#                   cluster of several machines)
#   --scheduler URL start only workers, for an existing scheduler (e.g. on another machine)
# PIDs and logs go to out/dask/ (GANI_DASK_STATE overrides).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${GANI_VENV_BIN:-$REPO/.venv/bin}"
STATE="${GANI_DASK_STATE:-$REPO/out/dask}"
ACTION="${1:-}"; shift || true
GPUS=""
HOST=127.0.0.1
PORT=8786
SCHEDULER=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --gpus) GPUS="$2"; shift ;;
    --host) HOST="$2"; shift ;;
    --port) PORT="$2"; shift ;;
    --scheduler) SCHEDULER="$2"; shift ;;
    *) echo "unknown option: $1 (see the top of $0)" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$STATE"
# No telemetry: the settings of gani_core/telemetry.py (KEY=value lines).
telemetry="$("$BIN/python" "$REPO/gani_core/telemetry.py")"
for setting in $telemetry; do export "$setting"; done
# Tasks unpickle functions from the repo's tasks/ and flows/ packages.
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

start_one() {  # start_one NAME CMD...: own session, PID and log under $STATE
  local name="$1"; shift
  setsid "$@" > "$STATE/$name.log" 2>&1 < /dev/null &
  echo $! > "$STATE/$name.pid"
  echo "$name: pid $! (log $STATE/$name.log)"
}

case "$ACTION" in
  start)
    if [[ -z "$GPUS" ]]; then
      GPUS="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)"
      [[ "$GPUS" -gt 0 ]] || { echo "no GPU found by nvidia-smi; pass --gpus N" >&2; exit 1; }
    fi
    if [[ -z "$SCHEDULER" ]]; then
      SCHEDULER="tcp://$HOST:$PORT"
      start_one scheduler "$BIN/dask" scheduler --host "$HOST" --port "$PORT" --dashboard-address "$HOST:8787"
      deadline=$((SECONDS + 60))
      until "$BIN/python" -c "import socket,sys; socket.create_connection(('$HOST', $PORT), 1)" 2>/dev/null; do
        (( SECONDS < deadline )) || { echo "scheduler not up after 60 s; see $STATE/scheduler.log" >&2; exit 1; }
        sleep 1
      done
    fi
    for ((i = 0; i < GPUS; i++)); do
      # One process per GPU, one task thread per process: a task owns the whole (visible) GPU while it runs.
      CUDA_VISIBLE_DEVICES="$i" start_one "gpu-worker-$i" "$BIN/dask" worker "$SCHEDULER" \
        --name "gpu-$i" --nworkers 1 --nthreads 1 --resources "GPU=1" --local-directory "$STATE/worker-$i"
    done
    cat <<EOF

$GPUS GPU worker(s) joining $SCHEDULER (dashboard: http://$HOST:8787 if the scheduler was started here).
Run the flow on them:
  $BIN/prefect deployment run invert-dataset/default --param cluster='{"dask_address": "$SCHEDULER", "gpu": true}' \\
      --param input_uri=s3://BUCKET/photos --param output_uri=s3://BUCKET/runs/NAME
Stop them: $0 stop
EOF
    ;;
  stop)
    for pidfile in "$STATE"/gpu-worker-*.pid "$STATE"/scheduler.pid; do
      [[ -f "$pidfile" ]] || continue
      pid="$(cat "$pidfile")"
      kill -TERM -- "-$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.5; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      echo "$(basename "$pidfile" .pid): stopped"
      rm -f "$pidfile"
    done
    ;;
  *) sed -n '2,14p' "$0"; exit 2 ;;
esac
