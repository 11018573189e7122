"""Text-to-tokens through the shared training entry point, on demo-corpus utterances."""

import jax
import numpy as np
import pytest

from avflow_jax.core import run_dir
from avflow_jax.data import manifest as manifest_lib
from avflow_jax.training import loop
from configs import text_to_tokens


@pytest.fixture(autouse=True)
def _fast_compile():
  # Compile time dominates these few steps; XLA's heavy optimisations are not what is tested.
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  yield
  jax.config.update("jax_disable_most_optimizations", old)


def test_text_to_tokens_trains_and_resumes_through_train_py(demo_shards, tmp_path):
  config = text_to_tokens.get_config("tiny")
  config.data.dir = demo_shards
  config.data.index_cache = str(tmp_path / "index")
  config.batch_size = 8
  # Compilation, not steps, is what this costs: two steps, a checkpoint, and one more on restart.
  config.num_steps, config.log_every, config.ckpt_every = 2, 1, 2
  config.compilation_cache_dir = str(tmp_path / "jax_cache")  # The restart reuses it.
  workdir = str(tmp_path / "t2t")
  first = loop.train_and_evaluate(config, workdir)
  assert np.isfinite(first["loss"]) and "loss_dur_loss" in first
  assert run_dir.latest_checkpoint_dir(workdir)[0] == 2
  config.num_steps = 3  # A restart continues from step 2.
  again = loop.train_and_evaluate(config, workdir)
  assert run_dir.latest_checkpoint_dir(workdir)[0] == 3
  assert np.isfinite(again["loss"])


def test_holdout_split_keeps_its_sentences_out_of_training(demo_shards, tmp_path):
  from avflow_jax.data import utterances  # pylint: disable=g-import-not-at-top
  cache = str(tmp_path / "index")
  val = utterances.build_utterance_index(demo_shards, "val", cache_dir=cache)
  train_index = utterances.build_utterance_index(demo_shards, "train", cache_dir=cache)
  held = {utterances.text_key(u["text"]) for u in val}
  overlap = [u for u in train_index if utterances.text_key(u["text"]) in held]
  assert overlap, "the 2-minute demo corpus should repeat some val sentences in train"
  val_ids = {tuple(u["ids"]) for u in val}

  def example_ids(holdout):
    ds = utterances.make_t2t_dataset(demo_shards, "train", 1, 0, 512, 1024, num_epochs=1,
                                   shuffle=False, cache_dir=cache, holdout_split=holdout,
                                   cache_mb=64)
    return [tuple(b["ids"][0, :b["ids_len"][0]]) for b in ds]

  kept, everything = example_ids("val"), example_ids("")
  assert len(everything) - len(kept) == len(overlap)
  assert not val_ids & set(kept)
  assert val_ids & set(everything)


def test_config_variants_and_holdout_validation(demo_shards):
  from avflow_jax.training import config_validation  # pylint: disable=g-import-not-at-top
  manifest = manifest_lib.load_manifest(demo_shards)
  demo = text_to_tokens.get_config("demo")
  assert demo.data.holdout_split == "val" and demo.num_steps > 0
  config_validation.validate(demo, manifest, 1, 1)
  demo.data.holdout_split = "vall"
  with pytest.raises(ValueError, match=r"config.data.holdout_split: 'vall' is not a split"):
    config_validation.validate(demo, manifest, 1, 1)
  demo.data.holdout_split = "train"
  with pytest.raises(ValueError, match="is the training split"):
    config_validation.validate(demo, manifest, 1, 1)
  with pytest.raises(ValueError, match="unknown variant 'huge'"):
    text_to_tokens.get_config("huge")
