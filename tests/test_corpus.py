"""The SFT corpus: prompt supply and splits, the manifest that refuses stale or damaged data,
and a real regeneration that resumes."""

import itertools
import json
import pathlib
import runpy

import numpy as np
import pytest

from draftopd_jax.data import corpus as corpus_lib
from draftopd_jax.data.corpus import Corpus, CorpusSettings, Shard, fit_prompt, split_of
from draftopd_jax.data.prompts import is_heldout
from draftopd_jax.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]
TARGET = {"weights": "w1", "tokenizer": "t1"}
SHARD = Shard(["a#0", "b#2"], [[1, 2, 3], [4]], [[5, 6], [7, 8, 9, 2]])


def test_splits_keep_the_heldout_split_and_reserve_the_requested_share():
  ids = [f"conversation-{i}" for i in range(20_000)]
  splits = [split_of(i, 0.02, 0.2) for i in ids]
  assert [s == "heldout" for s in splits] == [is_heldout(i, 0.02) for i in ids]
  share = lambda name: splits.count(name) / len(ids)
  assert share("heldout") == pytest.approx(0.02, abs=0.005)
  assert share("reserved") == pytest.approx(0.2, abs=0.01)
  assert share("train") == pytest.approx(0.78, abs=0.01)


def test_later_user_turns_come_with_their_history():
  turns = list(itertools.islice(corpus_lib.sharegpt_turns("train", 0.02, 0.2), 300))
  assert len({prompt_id for prompt_id, _ in turns}) == len(turns)
  later = [(pid, m) for pid, m in turns if not pid.endswith("#0")]
  assert later, "the first conversations have several user turns"
  for prompt_id, messages in turns:
    conversation, turn = prompt_id.rsplit("#", 1)
    assert split_of(conversation, 0.02, 0.2) == "train"
    assert len(messages) == int(turn) + 1 and messages[-1]["role"] == "user"
    assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2) + ["user"]


def test_fit_prompt_drops_the_oldest_turns_first():
  chat = [{"role": "user", "content": "a" * 50}, {"role": "assistant", "content": "b" * 50},
          {"role": "user", "content": "c" * 10}]
  encode = lambda messages: [0] * sum(len(m["content"]) for m in messages)
  assert len(fit_prompt(encode, chat, 200)) == 110
  assert len(fit_prompt(encode, chat, 60)) == 10  # user+assistant pair dropped together
  assert fit_prompt(encode, chat, 5) is None


def test_shards_round_trip_and_resume(tmp_path):
  corpus = Corpus(tmp_path, CorpusSettings(), TARGET)
  corpus.add_shard(SHARD, {"seconds": 1.0, "generated_slots": 8})
  reopened = Corpus(tmp_path, CorpusSettings(), TARGET)
  assert reopened.num_prompts_done == 2
  assert reopened.examples() == list(zip(SHARD.prompts, SHARD.responses))
  assert reopened.totals()["response_tokens"] == 6
  assert Corpus.load(tmp_path, TARGET).examples(1) == [([1, 2, 3], [5, 6])]


@pytest.mark.parametrize("changed", ["settings", "target"])
def test_a_stale_corpus_is_refused(tmp_path, changed):
  Corpus(tmp_path, CorpusSettings(), TARGET).add_shard(SHARD, {})
  settings = CorpusSettings(response_tokens=128) if changed == "settings" else CorpusSettings()
  target = {**TARGET, "weights": "w2"} if changed == "target" else TARGET
  with pytest.raises(UserError, match=f"another {changed}"):
    Corpus(tmp_path, settings, target)
  if changed == "target":
    with pytest.raises(UserError, match="another target"):
      Corpus.load(tmp_path, target)


def test_a_damaged_shard_is_refused(tmp_path):
  corpus = Corpus(tmp_path, CorpusSettings(), TARGET)
  corpus.add_shard(SHARD, {})
  (tmp_path / "shard-00000.npz").write_bytes(b"torn")
  with pytest.raises(UserError, match="damaged"):
    corpus.examples()


@pytest.mark.slow
def test_regeneration_fills_shards_and_resumes(smollm, tmp_path):
  from draftopd_jax.data import regeneration
  from draftopd_jax.decoding.padding import pad_batch
  from draftopd_jax.decoding import generate

  config = runpy.run_path(str(ROOT / "configs" / "corpus.py"))["get_config"]("quick")
  config.data.num_prompts = 4  # one shard, then extended to two
  first = regeneration.build(config, tmp_path, smollm)
  assert first.num_prompts_done == 4 and len(first.shards) == 1
  config.data.num_prompts = 6
  second = regeneration.build(config, tmp_path, smollm)
  assert [s["file"] for s in second.shards] == ["shard-00000.npz", "shard-00001.npz"]
  assert second.shards[0] == first.shards[0]  # the finished shard is kept, not regenerated
  examples = regeneration.load_corpus(tmp_path, smollm).examples()
  assert len(examples) == 6
  # The responses are the target's greedy answers, batched or not.
  prompt, response = examples[5]
  tokens, mask = pad_batch([prompt], smollm.tokenizer.pad_id)
  assert generate(smollm.cfg, smollm.params, tokens, mask, max_new_tokens=8,
                  eos_ids=smollm.tokenizer.eos_ids)[0] == response
  manifest = json.loads((tmp_path / "manifest.json").read_text())
  assert manifest["target"]["tokenizer"] == smollm.tokenizer.fingerprint
  assert all(s["generated_slots"] >= s["response_tokens"] for s in manifest["shards"])
  with np.load(tmp_path / "shard-00000.npz") as z:
    assert z["response_tokens"].dtype == np.uint16
  # SFT reads it (data.corpus, validation.corpus), checked against the target it was made with.
  from draftopd_jax.jobs.sft import corpus_examples
  read = corpus_examples(str(tmp_path), 5, smollm, "data.corpus_examples")
  assert [(list(e.prompt_ids), list(e.response_ids)) for e in read] == examples[:5]
  with pytest.raises(UserError, match="fewer than data.corpus_examples=7"):
    corpus_examples(str(tmp_path), 7, smollm, "data.corpus_examples")
  later = corpus_examples(str(tmp_path), 0, smollm, "data.corpus_examples", skip=4)
  assert [(list(e.prompt_ids), list(e.response_ids)) for e in later] == examples[4:]
  with pytest.raises(UserError, match="holds 2 examples after the first 4, fewer than "
                                      "data.corpus_examples=3"):
    corpus_examples(str(tmp_path), 3, smollm, "data.corpus_examples", skip=4)
  with pytest.raises(UserError, match="holds the train split; use a heldout corpus"):
    corpus_examples(str(tmp_path), 0, smollm, "validation.examples", split="heldout")


@pytest.mark.slow
@pytest.mark.parametrize("variant, at_least", [("train", 1024), ("heldout", 256),
                                                ("reserved", 4096)])
def test_the_committed_corpora_are_this_targets_and_keep_to_their_split(smollm, variant, at_least):
  """The train corpus never holds evaluation data; the held-out one (SFT's validation loss) holds
  only the conversations every evaluation holds out; the reserved one only those kept from every
  shipped drafter for later experiments."""
  from draftopd_jax.data import regeneration

  config = runpy.run_path(str(ROOT / "configs" / "corpus.py"))["get_config"](variant)
  corpus = regeneration.load_corpus(ROOT / config.data.corpus, smollm)  # fingerprints match
  assert corpus.settings == regeneration.settings_of(config)
  assert corpus.num_prompts_done >= at_least
  for entry in corpus.shards:
    shard = corpus.read_shard(entry)  # checksums match
    assert all(split_of(pid.rsplit("#", 1)[0], 0.02, 0.2) == variant for pid in shard.prompt_ids)
    assert all(len(p) <= 256 for p in shard.prompts)
    assert all(1 <= len(r) <= 256 for r in shard.responses)
