#!/usr/bin/env bash
# One machine as a "cluster": a local Ray head (dashboard + job server on 127.0.0.1) and an MLflow tracking
# server on 127.0.0.1:5000, so the `ray job submit` commands of cluster/README.md run on a laptop or CPU box.
#
#   cluster/local.sh start      start both (skips what is already running), print the submit commands
#   cluster/local.sh commands   print the submit commands again
#   cluster/local.sh status
#   cluster/local.sh stop       stop exactly what `start` started (never `ray stop`: that kills every Ray
#                               process of the machine, other people's included)
#
# Settings (environment):
#   NUM_CPUS (all cores)  NUM_GPUS (auto-detected)  RAY_PORT (6380)  DASHBOARD_PORT (8265)  MLFLOW_PORT (5000)
#   STATE_DIR (outputs/cluster: pid files, logs, mlflow.db, mlartifacts)
#   RAY_TMP_DIR (/tmp/maskflow-ray-$UID: short, Ray's socket paths must stay under ~107 characters)
#   RAY_START_ARGS (extra `ray start` flags, e.g. "--ray-client-server-port 10002" if 10001 is taken)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# the venv's python must be the one jobs run: entrypoints say `python`, resolved on the head's PATH
if [[ -x "$REPO/.venv/bin/python" ]]; then
  export PATH="$REPO/.venv/bin:$PATH"
fi
PY="$(command -v python || command -v python3)"
NUM_CPUS="${NUM_CPUS:-$(getconf _NPROCESSORS_ONLN)}"
NUM_GPUS="${NUM_GPUS:-}"
RAY_PORT="${RAY_PORT:-6380}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
MLFLOW_PORT="${MLFLOW_PORT:-5000}"
STATE_DIR="${STATE_DIR:-$REPO/outputs/cluster}"
RAY_TMP_DIR="${RAY_TMP_DIR:-/tmp/maskflow-ray-$(id -u)}"
RAY_START_ARGS="${RAY_START_ARGS:-}"
ADDRESS="http://127.0.0.1:$DASHBOARD_PORT"
MLFLOW_URI="http://127.0.0.1:$MLFLOW_PORT"
# token auth, as Ray does by default for local clusters; the token lives in ~/.ray/auth_token
export RAY_AUTH_MODE=token
unset RAY_ADDRESS

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# launch PIDFILE LOG CMD...: run CMD in the background, detached (its own session and process group where
# setsid exists, so `stop` can end the whole group), and record its pid. `exec` keeps the pid that of CMD.
launch() {
  local pidfile="$1" log="$2"
  shift 2
  if command -v setsid >/dev/null; then
    (exec setsid nohup "$@" >"$log" 2>&1 </dev/null) &
  else
    (exec nohup "$@" >"$log" 2>&1 </dev/null) &
  fi
  echo $! >"$pidfile"
}

wait_http() {  # URL SECONDS NAME LOG: any HTTP answer (even 401) means the server is up
  "$PY" - "$1" "$2" "$3" "$4" <<'EOF'
import sys, time, urllib.error, urllib.request
url, timeout, name, log = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4]
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(url, timeout=2)
        sys.exit(0)
    except urllib.error.HTTPError:
        sys.exit(0)
    except OSError:
        time.sleep(0.5)
sys.exit(f"{name} did not answer on {url} within {timeout:.0f} s; see {log}")
EOF
}

stop_pidfile() {  # PIDFILE NAME
  local pidfile="$1" name="$2" pid
  if ! alive "$pidfile"; then
    rm -f "$pidfile"
    echo "$name: not running"
    return
  fi
  pid="$(cat "$pidfile")"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
  # leftovers of its process group (MLflow's web workers), never anything else
  kill -TERM -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
  echo "$name: stopped (pid $pid)"
}

start_mlflow() {
  if alive "$STATE_DIR/mlflow.pid"; then
    echo "mlflow: already running (pid $(cat "$STATE_DIR/mlflow.pid")) at $MLFLOW_URI"
    return
  fi
  mkdir -p "$STATE_DIR/mlartifacts"
  launch "$STATE_DIR/mlflow.pid" "$STATE_DIR/mlflow.log" \
    mlflow server --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$STATE_DIR/mlflow.db" --artifacts-destination "$STATE_DIR/mlartifacts"
  wait_http "$MLFLOW_URI/health" 120 "MLflow server" "$STATE_DIR/mlflow.log"
  echo "mlflow: $MLFLOW_URI (store $STATE_DIR/mlflow.db, artifacts $STATE_DIR/mlartifacts)"
}

start_ray() {
  if alive "$STATE_DIR/ray.pid"; then
    echo "ray: already running (pid $(cat "$STATE_DIR/ray.pid")), jobs at $ADDRESS"
    return
  fi
  ray get-auth-token --generate >/dev/null
  local gpus=()
  [[ -n "$NUM_GPUS" ]] && gpus=(--num-gpus "$NUM_GPUS")
  # MLFLOW_TRACKING_URI in the head's environment reaches every job (runtime_env.yaml passes it through).
  # --block keeps `ray start` running as the owner of the node: SIGTERM to it stops its processes only.
  export MLFLOW_TRACKING_URI="$MLFLOW_URI"
  # shellcheck disable=SC2086
  launch "$STATE_DIR/ray.pid" "$STATE_DIR/ray.log" \
    ray start --head --block --disable-usage-stats --port "$RAY_PORT" \
    --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" --include-dashboard true \
    --num-cpus "$NUM_CPUS" ${gpus[@]+"${gpus[@]}"} --temp-dir "$RAY_TMP_DIR" $RAY_START_ARGS
  wait_http "$ADDRESS/api/version" 120 "Ray dashboard" "$STATE_DIR/ray.log"
  echo "ray: head on 127.0.0.1:$RAY_PORT, jobs at $ADDRESS ($NUM_CPUS CPUs${NUM_GPUS:+, $NUM_GPUS GPUs}), log $STATE_DIR/ray.log"
}

commands() {
  cat <<EOF

Submit jobs from the repository root ($REPO). Paths must be absolute: jobs run in Ray's copy of the
code (cluster/runtime_env.yaml uploads it without outputs/ and .venv/).

  cd $REPO
  export RAY_AUTH_MODE=token    # the local head requires the token in ~/.ray/auth_token

  ray job submit --address $ADDRESS --runtime-env cluster/runtime_env.yaml -- \\
      python -m experiments.synthetic out_dir=$REPO/outputs/sprites num_videos=16

  ray job submit --address $ADDRESS --runtime-env cluster/runtime_env.yaml -- \\
      python -m experiments.tokenize inputs=$REPO/outputs/sprites output_dir=$REPO/outputs/tokens

  ray job submit --address $ADDRESS --runtime-env cluster/runtime_env.yaml -- \\
      python -m experiments.train shards=$REPO/outputs/tokens run_name=local-small run.storage_path=$REPO/outputs/ray_results scaling.num_workers=1 max_steps=200

  ray job submit --address $ADDRESS --runtime-env cluster/runtime_env.yaml -- \\
      python -m experiments.sample checkpoint=CHECKPOINT_DIR sampler=mgm sampling_steps=20 extrapolation=2 out_dir=$REPO/outputs/samples

  ray job list --address $ADDRESS ; ray job logs --address $ADDRESS -f SUBMISSION_ID
  MLflow UI: $MLFLOW_URI    Ray dashboard: $ADDRESS    stop: cluster/local.sh stop
EOF
}

status() {
  if alive "$STATE_DIR/ray.pid"; then echo "ray: running (pid $(cat "$STATE_DIR/ray.pid")), jobs at $ADDRESS"; else echo "ray: stopped"; fi
  if alive "$STATE_DIR/mlflow.pid"; then echo "mlflow: running (pid $(cat "$STATE_DIR/mlflow.pid")) at $MLFLOW_URI"; else echo "mlflow: stopped"; fi
}

mkdir -p "$STATE_DIR"
case "${1:-start}" in
  start) start_mlflow; start_ray; commands ;;
  stop) stop_pidfile "$STATE_DIR/ray.pid" ray; stop_pidfile "$STATE_DIR/mlflow.pid" mlflow ;;
  status) status ;;
  commands) commands ;;
  *) echo "usage: $0 [start|stop|status|commands]" >&2; exit 2 ;;
esac
