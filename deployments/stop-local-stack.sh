#!/usr/bin/env bash
# Stop what deployments/start-local-stack.sh started, from the PIDs in its state folder (default out/stack/):
# the worker first (SIGINT, then SIGINT again: a Prefect worker ignores SIGTERM and stops on the second SIGINT),
# then MLflow and the Prefect server (SIGTERM). Each started in its own session, so its children go with it.
# Whatever is still there after a bounded wait is killed. The database and logs stay in the state folder.
#
# usage: deployments/stop-local-stack.sh [--state DIR]
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$REPO/out/stack"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --state) STATE="$2"; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# gone PGID: no process of that process group is left
gone() { ! kill -0 -- "-$1" 2>/dev/null; }

# wait_gone PGID SECONDS
wait_gone() {
  local deadline=$((SECONDS + $2))
  while ! gone "$1"; do
    (( SECONDS >= deadline )) && return 1
    sleep 0.5
  done
}

# stop NAME SIGNAL:SECONDS...: send each signal to NAME's process group in turn and wait up to SECONDS
# for the group to be gone; SIGKILL at the end if it is still there
stop() {
  local name="$1"; shift
  local pidfile="$STATE/$name.pid"
  [[ -f "$pidfile" ]] || return 0
  local pid; pid="$(cat "$pidfile")"
  if gone "$pid"; then
    echo "$name: not running"
  else
    local step sig
    for step in "$@" KILL:5; do
      sig="${step%%:*}"
      # SIGINT goes to the worker's main process only: its flow-run children are its to stop
      if [[ $sig == INT ]]; then kill -INT "$pid" 2>/dev/null; else kill "-$sig" -- "-$pid" 2>/dev/null; fi
      if wait_gone "$pid" "${step##*:}"; then break; fi
      [[ $sig == KILL ]] && { echo "$name: still running after SIGKILL (pgid $pid)" >&2; return 1; }
    done
    echo "$name: stopped (pid $pid)"
  fi
  rm -f "$pidfile"
}

stop worker INT:3 INT:20 TERM:10
stop mlflow TERM:15
stop server TERM:20
