"""Text-to-tokens through the shared training entry point, on demo-corpus utterances."""

import jax
import numpy as np
import pytest

from avflow_jax import train
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
  config.num_steps, config.log_every, config.ckpt_every = 6, 3, 3
  config.compilation_cache_dir = str(tmp_path / "jax_cache")  # The restart reuses it.
  workdir = str(tmp_path / "t2t")
  first = train.train_and_evaluate(config, workdir)
  assert np.isfinite(first["loss"]) and "loss_dur_loss" in first
  assert train.checkpointing.latest_checkpoint_dir(workdir)[0] == 6
  config.num_steps = 9  # A restart continues from step 6.
  again = train.train_and_evaluate(config, workdir)
  assert train.checkpointing.latest_checkpoint_dir(workdir)[0] == 9
  assert np.isfinite(again["loss"])
