#!/usr/bin/env bash
# Runs a job on every worker of a Cloud TPU VM pod slice with gcloud.
usage() {
  cat <<'USAGE'
usage: launch/tpu_pod.sh --name NAME --zone ZONE [options] CONFIG [FLAGS...]
       launch/tpu_pod.sh --name NAME --zone ZONE --teardown

Creates the TPU VM if it does not exist (or reuses it), copies this checkout's HEAD commit to every worker and
installs it, then runs `python -m draftopd_jax.main --config=CONFIG FLAGS` on all workers at once
(`gcloud compute tpus tpu-vm ssh --worker=all`); the output of all workers streams here and into
LOG. JAX finds the other workers by itself. Use a gs:// --workdir so that every worker sees the
checkpoints. A preempted job (exit 75) can be started again with the same command: it resumes.

  --name NAME           TPU VM name
  --zone ZONE           e.g. us-east5-a
  --project PROJECT     gcloud project (default: gcloud's configured one)
  --accelerator TYPE    accelerator type when creating (default v5p-32)
  --version VERSION     TPU software version when creating (default v2-alpha-tpuv5)
  --spot                create a Spot VM
  --log LOG             local log file (default tpu_NAME.log)
  --teardown            delete the TPU VM and exit
  --dry-run             print the commands instead of running them
USAGE
}
set -euo pipefail
name="" zone="" project="" accelerator="v5p-32" version="v2-alpha-tpuv5" spot="" log="" teardown=0
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --name) name="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --accelerator) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --spot) spot=" --spot"; shift ;;
    --log) log="$2"; shift 2 ;;
    --teardown) teardown=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[[ -n "$name" && -n "$zone" ]] || { echo "error: --name and --zone are required (see --help)" >&2; exit 2; }
where="--zone=${zone}${project:+ --project=${project}}"
run() {  # prints the command on a dry run, else runs it
  if [[ $dry_run -eq 1 ]]; then echo "$*"; else eval "$*"; fi
}
if [[ $teardown -eq 1 ]]; then
  run "gcloud compute tpus tpu-vm delete ${name} ${where} --quiet"
  exit 0
fi
[[ $# -ge 1 ]] || { echo "error: no CONFIG given (see --help)" >&2; exit 2; }
config="$1"; shift
args=""  # the flags, quoted for the shell
if [[ $# -gt 0 ]]; then args=$(printf ' %q' "$@"); fi
log="${log:-tpu_${name}.log}"
cd "$(dirname "$0")/.."
exists="gcloud compute tpus tpu-vm describe ${name} ${where} --format='value(state)'"
create="gcloud compute tpus tpu-vm create ${name} ${where} --accelerator-type=${accelerator} --version=${version}${spot}"
if [[ $dry_run -eq 1 ]]; then
  echo "${exists} || ${create}"
elif ! eval "${exists}" >/dev/null 2>&1; then
  eval "${create}"
fi
run "git archive --format=tar.gz --prefix=draftopd_jax/ -o /tmp/draftopd_jax.tar.gz HEAD"
run "gcloud compute tpus tpu-vm scp /tmp/draftopd_jax.tar.gz ${name}:~/ ${where} --worker=all"
install="rm -rf draftopd_jax && tar xzf draftopd_jax.tar.gz && pip install -q -e ./draftopd_jax 'jax[tpu]'"
run "gcloud compute tpus tpu-vm ssh ${name} ${where} --worker=all --command=\"${install}\""
job="cd draftopd_jax && python -m draftopd_jax.main --config=${config}${args}"
run "gcloud compute tpus tpu-vm ssh ${name} ${where} --worker=all --command=\"${job}\" 2>&1 | tee -a ${log}"
