#!/usr/bin/env bash
# Runs on every worker of a TPU slice, in its home directory (launch/setup.sh
# and launch/job.sh copy it there and start it on all workers at once).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

usage() {
  cat <<'EOF'
Usage: worker.sh setup [--python X.Y] [--jax-version V] [--dry-run]
       worker.sh run --job train|eval|reproduce --config SPEC --workdir DIR
         [--dry-run] [-- HMX_FEEL_ARGS ...]

On a TPU VM worker, from its home directory:

  setup  hmx/venv: Python X.Y (uv-managed), the hmx_jax wheel in hmx/stage
         with its tpu extra, and jax[tpu]==V (which pins the matching
         libtpu); then checks that JAX sees the TPU.
  run    stops what still holds the TPU (an earlier run, a hung process),
         then runs `hmx-feel JOB --config SPEC --workdir DIR ARGS` with its
         output in hmx/logs/<time>-JOB.log, streamed here as it is written.
         The run carries on if this connection drops; a later `run` stops it
         first.
EOF
}

(($#)) || { usage; exit 2; }
command="$1"
shift
python="3.11" jax_version="" job="" config="" workdir=""
parse_options "python jax-version job config workdir" "" "$@"
((${#OVERRIDES[@]} == 0)) || die "${OVERRIDES[0]}: put overrides after --"

if ((!DRY_RUN)); then
  cd "$HOME"
fi

setup() {
  [[ -n "$jax_version" ]] || die "--jax-version is required"
  local uv=.local/bin/uv wheels
  # uv brings its own Python, so the image's (3.10 on Ubuntu 22.04) does not
  # bound the JAX version. Ubuntu 24.04's pip wants --break-system-packages
  # for --user installs; 22.04's pip does not know that flag.
  if ((DRY_RUN)); then
    quoted python3 -m pip install --user --quiet --upgrade uv
    note "where that fails (Ubuntu 24.04): the same with --break-system-packages"
  elif ! python3 -m pip install --user --quiet --upgrade uv; then
    run python3 -m pip install --user --quiet --upgrade --break-system-packages uv
  fi
  wheels=(hmx/stage/hmx_jax-*.whl)
  if ((!DRY_RUN)) && [[ ${#wheels[@]} != 1 || ! -f "${wheels[0]}" ]]; then
    fail "expected one hmx_jax wheel in ~/hmx/stage (launch/setup.sh puts it there)"
  fi
  run "$uv" venv --quiet --clear --python "$python" hmx/venv
  # The wheel's version stays the same from one change to the next: reinstall.
  run "$uv" pip install --quiet --python hmx/venv/bin/python \
    --reinstall-package hmx-jax "${wheels[0]}[tpu]" "jax[tpu]==$jax_version"
  run hmx/venv/bin/python -c 'import jax; print(f"worker {jax.process_index()}: {jax.local_device_count()} of {jax.device_count()} TPU devices, jax {jax.__version__}")'
}

any_alive() {
  local pid
  for pid in "$@"; do
    if sudo kill -0 "$pid" 2>/dev/null; then
      return 0
    fi
  done
  return 1
}

# Processes holding a TPU device file (/dev/accel* on v4 and older, VFIO
# groups on v5e/v5p/v6e) would make this run fail to open the TPU.
stop_tpu_holders() {
  local devices pids
  if ((DRY_RUN)); then
    note "stop what holds the TPU: SIGTERM, after 30s SIGKILL, to the PIDs from:"
    quoted sudo lsof -t -w '/dev/accel*' '/dev/vfio/[0-9]*'
    quoted sudo rm -f /tmp/libtpu_lockfile
    return
  fi
  shopt -s nullglob
  devices=(/dev/accel* /dev/vfio/[0-9]*)
  shopt -u nullglob
  if ((${#devices[@]})); then
    mapfile -t pids < <(sudo lsof -t -w "${devices[@]}" | sort -u || true)
    if ((${#pids[@]})); then
      echo "worker $(hostname): stopping TPU holders ${pids[*]}" >&2
      # SIGTERM first: a trainer saves a checkpoint on it.
      sudo kill -TERM "${pids[@]}" 2>/dev/null || true
      for _ in $(seq 30); do
        any_alive "${pids[@]}" || break
        sleep 1
      done
      sudo kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
  fi
  # A lock file left by a killed process blocks the next one.
  sudo rm -f /tmp/libtpu_lockfile
}

run_job() {
  case "$job" in
    train | eval | reproduce) ;;
    *) die "--job $(quote "$job"): use train, eval or reproduce" ;;
  esac
  [[ -n "$config" ]] || die "--config is required"
  [[ -n "$workdir" ]] || die "--workdir is required"
  local cmd=(hmx/venv/bin/hmx-feel "$job" --config "$config" --workdir "$workdir" "${EXTRA[@]}")
  stop_tpu_holders
  if ((DRY_RUN)); then
    note "with hmx/job/env (KEY=VALUE lines) in the environment when present;"
    note "output to hmx/logs/<time>-$job.log, streamed back:"
    quoted "${cmd[@]}"
    return
  fi
  if [[ -f hmx/job/env ]]; then
    set -a
    # shellcheck disable=SC1091  # the user's file, copied by launch/job.sh
    source hmx/job/env
    set +a
  fi
  mkdir -p hmx/logs
  local log pid status=0
  log="hmx/logs/$(date -u +%Y%m%dT%H%M%SZ)-$job.log"
  echo "worker $(hostname): $(quoted "${cmd[@]}")" >&2
  # nohup: a dropped ssh connection must not end a long run. The log is
  # created first (the run's redirection may come after the first read) and
  # streamed by polling its size, liveness first, so that the read after
  # the run has exited gets its last lines.
  : >"$log"
  PYTHONUNBUFFERED=1 nohup "${cmd[@]}" >"$log" 2>&1 </dev/null &
  pid=$!
  local shown=0 size running
  while :; do
    running=0
    kill -0 "$pid" 2>/dev/null && running=1
    size=$(stat -c %s "$log")
    if ((size > shown)); then
      tail -c +"$((shown + 1))" "$log" | head -c "$((size - shown))"
      shown=$size
    fi
    ((running)) || break
    sleep 1
  done
  wait "$pid" || status=$?
  ((status == 0)) || fail "worker $(hostname): hmx-feel $job exited with $status (log: ~/$log)"
}

case "$command" in
  setup) setup ;;
  run) run_job ;;
  -h | --help) usage ;;
  *) die "unknown command $(quote "$command"): use setup or run (see --help)" ;;
esac
