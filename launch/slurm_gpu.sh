#!/usr/bin/env bash
# Submits a multi-node GPU job to SLURM: one JAX process per node, all GPUs of the node each.
usage() {
  cat <<'USAGE'
usage: launch/slurm_gpu.sh [options] CONFIG [FLAGS...]

Writes an sbatch script and submits it. Each node runs one process (`srun`, one task per node)
that drives all its GPUs; process 0's node is the coordinator. SLURM sends SIGTERM 120 s before
the time limit or on preemption: the job saves a checkpoint and exits 75, and the script then
requeues itself (`scontrol requeue`), so the job resumes where it stopped. Use a --workdir on a
file system that all nodes share.

  --nodes N             nodes (default 2)
  --gpus-per-node N     GPUs per node (default 8)
  --partition P         SLURM partition
  --account A           SLURM account
  --time T              time limit (default 04:00:00)
  --job-name NAME       (default draftopd)
  --port P              the coordinator's port (default 12355)
  --script FILE         where to write the sbatch script (default slurm_NAME.sbatch)
  --dry-run             print the sbatch script and the submit command instead
USAGE
}
set -euo pipefail
nodes=2 gpus=8 partition="" account="" time_limit="04:00:00" job_name="draftopd" port=12355
script="" dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --gpus-per-node) gpus="$2"; shift 2 ;;
    --partition) partition="$2"; shift 2 ;;
    --account) account="$2"; shift 2 ;;
    --time) time_limit="$2"; shift 2 ;;
    --job-name) job_name="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --script) script="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
[[ $# -ge 1 ]] || { echo "error: no CONFIG given (see --help)" >&2; exit 2; }
config="$1"; shift
args=""  # the flags, quoted for the shell
if [[ $# -gt 0 ]]; then args=$(printf ' %q' "$@"); fi
script="${script:-slurm_${job_name}.sbatch}"
job="python -m draftopd_jax.main --config=${config}${args}"
body=$(cat <<SBATCH
#!/usr/bin/env bash
#SBATCH --job-name=${job_name}
#SBATCH --nodes=${nodes}
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=${gpus}
#SBATCH --time=${time_limit}
#SBATCH --requeue
#SBATCH --signal=TERM@120
#SBATCH --output=${job_name}-%j.log
${partition:+#SBATCH --partition=${partition}}
${account:+#SBATCH --account=${account}}
cd "$(pwd)"
coordinator=\$(scontrol show hostnames "\$SLURM_JOB_NODELIST" | head -n 1)
# Each task appends its own rank to the job's flags (\$@ inside bash -c, so no quoting games).
srun --kill-on-bad-exit=1 bash -c 'exec "\$@" --coordinator_address="\$0" --num_processes="\$SLURM_NTASKS" --process_id="\$SLURM_PROCID"' "\$coordinator:${port}" ${job} && status=0 || status=\$?
if [[ \$status -eq 75 ]]; then scontrol requeue "\$SLURM_JOB_ID"; fi
exit \$status
SBATCH
)
if [[ $dry_run -eq 1 ]]; then
  echo "# ${script}"; echo "$body"; echo "sbatch ${script}"
  exit 0
fi
echo "$body" > "$script"
sbatch "$script"
