"""Prompt sources: chat `messages` JSONL files, TFDS datasets and the train / held-out split."""

import builtins
import json

import pytest

from draftopd_jax.data import prompts
from draftopd_jax.errors import UserError


def write_jsonl(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return str(path)


def test_chat_messages_keep_turns_up_to_the_last_user_turn(tmp_path):
  chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "2+2?"},
          {"role": "assistant", "content": "4"}]
  path = write_jsonl(tmp_path / "p.jsonl", [{"messages": chat, "id": "c1"}, {"prompt": "Plain"}])
  records = prompts.read_prompt_records(path)
  assert records[0] == ("c1", chat[:4])  # the final reply is what the target regenerates
  assert records[1] == (prompts.content_id("Plain"), "Plain")


@pytest.mark.parametrize("record, message", [
    ({"messages": [{"role": "assistant", "content": "x"}]}, "no user turn"),
    ({"messages": [{"role": "user"}]}, '"messages" must be a list'),
    ({"messages": "hi"}, '"messages" must be a list'),
    ({"text": "no prompt"}, "p.jsonl:1"),
])
def test_malformed_chat_records_name_the_line(tmp_path, record, message):
  path = write_jsonl(tmp_path / "p.jsonl", [record])
  with pytest.raises(UserError, match=message):
    prompts.read_prompt_records(path)


def test_file_split_is_by_id_and_disjoint(tmp_path):
  records = [{"prompt": f"question {i}", "id": f"conv-{i}"} for i in range(400)]
  path = write_jsonl(tmp_path / "p.jsonl", records)
  train = prompts.training_prompts(path, "train", 1000, heldout_fraction=0.1)
  heldout = prompts.training_prompts(path, "heldout", 1000, heldout_fraction=0.1)
  assert not set(train) & set(heldout) and len(train) + len(heldout) == 400
  assert 15 < len(heldout) < 70
  assert heldout == [r["prompt"] for r in records if prompts.is_heldout(r["id"], 0.1)]
  # The split depends on the id only, not on the order of the file.
  write_jsonl(tmp_path / "r.jsonl", records[::-1])
  assert prompts.training_prompts(str(tmp_path / "r.jsonl"), "heldout", 1000, 0.1) == heldout[::-1]


def build_tiny_tfds(data_dir, texts):
  import tensorflow_datasets as tfds

  class TinyPrompts(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, disable_shuffling=True,
                                   features=tfds.features.FeaturesDict(
                                       {"id": tfds.features.Text(), "text": tfds.features.Text()}))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      for i, text in enumerate(texts):
        yield i, {"id": f"tfds-{i}", "text": text}

  with tfds.core.registered.skip_registration():  # built locally, read back by name
    TinyPrompts(data_dir=str(data_dir), file_format="array_record").download_and_prepare()


def test_tfds_source_reads_a_locally_built_dataset(tmp_path):
  texts = [f"prompt number {i} ✓" for i in range(60)]
  build_tiny_tfds(tmp_path, texts)
  source = "tfds:tiny_prompts:train"
  train = prompts.training_prompts(source, "train", 1000, 0.1, "text", str(tmp_path))
  heldout = prompts.training_prompts(source, "heldout", 1000, 0.1, "text", str(tmp_path))
  assert sorted(train + heldout) == sorted(texts) and heldout
  assert heldout == [t for i, t in enumerate(texts) if prompts.is_heldout(f"tfds-{i}", 0.1)]
  with pytest.raises(UserError, match="no feature 'prompt'.*tfds_field"):
    prompts.training_prompts(source, "train", 10, 0.1, "prompt", str(tmp_path))
  with pytest.raises(UserError, match="'nope' split 'train' could not be opened"):
    prompts.training_prompts("tfds:nope", "train", 10, 0.1, "text", str(tmp_path))


def test_tfds_source_without_the_package_names_the_extra(monkeypatch):
  real_import = builtins.__import__

  def no_tfds(name, *args, **kwargs):
    if name == "tensorflow_datasets":
      raise ImportError(name)
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_tfds)
  with pytest.raises(UserError, match=r'pip install -e "\.\[tfds\]"'):
    prompts.training_prompts("tfds:anything", "train", 4, 0.1)
