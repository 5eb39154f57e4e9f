#!/usr/bin/env bash
# Runs a job on this machine, as one process or as several that talk over loopback.
usage() {
  cat <<'USAGE'
usage: launch/local.sh [--processes N] [--devices N] [--port P] [--dry-run] CONFIG [FLAGS...]

  CONFIG        a job config, e.g. configs/sft.py or configs/opd.py:quick
  FLAGS         passed on to draftopd_jax.main (--workdir=DIR, --config.key=value, ...)
  --processes N run N JAX processes on this machine (CPU collectives over loopback, as N hosts
                would); default 1
  --devices N   fake N CPU devices per process (XLA's host platform device count, added to
                XLA_FLAGS)
  --port P      the coordinator's port for --processes > 1 (default 12355)
  --dry-run     print the commands instead of running them
A job stopped by SIGTERM exits with 75 after saving a checkpoint; run the same command again to
resume.
USAGE
}
set -euo pipefail
processes=1 devices="" port=12355 dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --processes) processes="$2"; shift 2 ;;
    --devices) devices="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || { echo "error: no CONFIG given (see --help)" >&2; exit 2; }
config="$1"; shift
args=""  # the flags, quoted for the shell
if [[ $# -gt 0 ]]; then args=$(printf ' %q' "$@"); fi
env_prefix=""
if [[ -n "$devices" ]]; then
  # Added to the caller's XLA flags, not in place of them.
  flags="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=${devices}"
  env_prefix="XLA_FLAGS=$(printf '%q' "$flags") "
fi
job="python -m draftopd_jax.main --config=${config}${args}"
if [[ "$processes" -eq 1 ]]; then
  if [[ $dry_run -eq 1 ]]; then echo "${env_prefix}${job}"; exit 0; fi
  eval "exec env ${env_prefix}${job}"
fi
commands=()
for ((id = 0; id < processes; id++)); do
  commands+=("${env_prefix}${job} --coordinator_address=localhost:${port} --num_processes=${processes} --process_id=${id}")
done
if [[ $dry_run -eq 1 ]]; then printf '%s &\n' "${commands[@]}"; echo wait; exit 0; fi
pids=()
for command in "${commands[@]}"; do
  eval "$command" & pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
