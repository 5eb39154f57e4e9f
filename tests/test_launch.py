"""The launchers: --help, the exact commands of their dry runs, and the SLURM script run for real
with stand-ins for `srun` and `scontrol`."""

import os
import pathlib
import subprocess

import pytest

from draftopd_jax.training import preemption

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCHERS = ("local.sh", "tpu_pod.sh", "slurm_gpu.sh")


def launch(script: str, *args: str, env=None) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", str(ROOT / "launch" / script), *args], capture_output=True,
                        text=True, cwd=ROOT, env=env, timeout=600)


@pytest.mark.parametrize("script", LAUNCHERS)
def test_help_and_bad_usage(script):
  shown = launch(script, "--help")
  assert shown.returncode == 0 and shown.stdout.startswith("usage: launch/" + script)
  bad = launch(script, "--no-such-option")
  assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
      "error: unknown option --no-such-option (see --help)"]


def test_local_dry_run():
  one = launch("local.sh", "--dry-run", "configs/sft.py:quick", "--workdir=runs/a b")
  assert one.stdout.splitlines() == [
      r"python -m draftopd_jax.main --config=configs/sft.py:quick --workdir=runs/a\ b"]
  two = launch("local.sh", "--processes", "2", "--devices", "4", "--port", "2000", "--dry-run",
               "configs/opd.py", env={**os.environ, "XLA_FLAGS": "--xla_dump_to=d"})
  job = ("XLA_FLAGS=--xla_dump_to=d\\ --xla_force_host_platform_device_count=4 "
         "python -m draftopd_jax.main "
         "--config=configs/opd.py --coordinator_address=localhost:2000 --num_processes=2 ")
  assert two.stdout.splitlines() == [job + "--process_id=0 &", job + "--process_id=1 &", "wait"]


def test_tpu_pod_dry_run():
  where = "--zone=us-east5-a --project=proj"
  run = launch("tpu_pod.sh", "--name", "opd", "--zone", "us-east5-a", "--project", "proj",
               "--accelerator", "v5p-64", "--spot", "--dry-run", "configs/opd.py:qwen3_8b_pod",
               "--workdir=gs://bucket/opd")
  assert run.returncode == 0, run.stderr
  assert run.stdout.splitlines() == [
      f"gcloud compute tpus tpu-vm describe opd {where} --format='value(state)' || "
      f"gcloud compute tpus tpu-vm create opd {where} --accelerator-type=v5p-64 "
      "--version=v2-alpha-tpuv5 --spot",
      "git archive --format=tar.gz --prefix=draftopd_jax/ -o /tmp/draftopd_jax.tar.gz HEAD",
      f"gcloud compute tpus tpu-vm scp /tmp/draftopd_jax.tar.gz opd:~/ {where} --worker=all",
      f"gcloud compute tpus tpu-vm ssh opd {where} --worker=all --command=\"rm -rf draftopd_jax "
      "&& tar xzf draftopd_jax.tar.gz && pip install -q -e ./draftopd_jax 'jax[tpu]'\"",
      f"gcloud compute tpus tpu-vm ssh opd {where} --worker=all --command=\"cd draftopd_jax && "
      "python -m draftopd_jax.main --config=configs/opd.py:qwen3_8b_pod "
      "--workdir=gs://bucket/opd\" 2>&1 | tee -a tpu_opd.log"]
  teardown = launch("tpu_pod.sh", "--name", "opd", "--zone", "z", "--teardown", "--dry-run")
  assert teardown.stdout.splitlines() == ["gcloud compute tpus tpu-vm delete opd --zone=z --quiet"]
  assert launch("tpu_pod.sh", "--zone", "z", "configs/opd.py").returncode == 2


def test_slurm_dry_run():
  run = launch("slurm_gpu.sh", "--nodes", "4", "--gpus-per-node", "8", "--partition", "h200",
               "--dry-run", "configs/sft.py:qwen3_8b_pod", "--workdir=/shared/sft")
  assert run.returncode == 0, run.stderr
  lines = run.stdout.splitlines()
  assert lines[0] == "# slurm_draftopd.sbatch" and lines[-1] == "sbatch slurm_draftopd.sbatch"
  for directive in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--requeue",
                    "--signal=TERM@120", "--partition=h200"):
    assert f"#SBATCH {directive}" in lines
  srun = next(line for line in lines if line.startswith("srun "))
  assert srun == ("""srun --kill-on-bad-exit=1 bash -c 'exec "$@" --coordinator_address="$0" """
                  """--num_processes="$SLURM_NTASKS" --process_id="$SLURM_PROCID"' """
                  """"$coordinator:12355" python -m draftopd_jax.main """
                  """--config=configs/sft.py:qwen3_8b_pod --workdir=/shared/sft """
                  """&& status=0 || status=$?""")
  assert f"if [[ $status -eq {preemption.EXIT_CODE} ]]; then scontrol requeue" in run.stdout


@pytest.mark.slow
def test_slurm_script_runs_the_job(tmp_path, smollm):
  """The generated sbatch script, run as SLURM would (one task), with stand-ins for srun and
  scontrol: the job joins a 1-process distributed run and completes; a failing job is not
  requeued (only exit 75 is)."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  (bin_dir / "srun").write_text('#!/usr/bin/env bash\nshift\n'
                                'SLURM_NTASKS=1 SLURM_PROCID=0 exec "$@"\n')
  (bin_dir / "scontrol").write_text('#!/usr/bin/env bash\n'
                                    f'echo "$@" >> {tmp_path}/scontrol.log\n'
                                    'if [[ $1 == show ]]; then echo localhost; fi\n')
  for stand_in in bin_dir.iterdir():
    stand_in.chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "7",
         "SLURM_JOB_NODELIST": "node1"}
  script = tmp_path / "job.sbatch"
  prompt = "--config.prompts=('Say hi.',)"
  submit = launch("slurm_gpu.sh", "--script", str(script), "--port", "23456",
                  "configs/generate.py", "--config.max_new_tokens=4", prompt,
                  f"--workdir={tmp_path / 'out'}", env={**env, "PATH": f"{bin_dir}:/bin:/usr/bin"})
  assert submit.returncode != 0 and script.is_file()  # no sbatch here; the script was written
  ran = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=ROOT, env=env,
                       timeout=600)
  assert ran.returncode == 0, ran.stderr[-2000:]
  assert (tmp_path / "out" / "completions.jsonl").is_file()
  assert (tmp_path / "scontrol.log").read_text() == "show hostnames node1\n"
  script.write_text(script.read_text().replace("--config.max_new_tokens=4",
                                               "--config.max_new_tokens=0"))
  failed = subprocess.run(["bash", str(script)], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=600)
  assert failed.returncode != 0 and "requeue" not in (tmp_path / "scontrol.log").read_text()
