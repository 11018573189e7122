"""Test-only helpers: random BigVGAN weights and a fake ASR model (synthetic data itself is
`data_prep/synthetic.py`, shared with the benchmarks)."""

import sys
import types

import numpy as np

from avflow_jax.core import constants as C
from data_prep import synthetic


def random_bigvgan_state_dict(config, seed: int = 0, std: float = 0.1) -> dict:
  """A BigVGAN generator state dict (weight-norm spelling) with random weights.

  The anti-aliasing filters are the real Kaiser-sinc ones (they are buffers, not weights), the
  weight-norm gains stay in [0.3, 0.8] so activations neither vanish nor explode.
  """
  from avflow_jax.models import bigvgan as bv  # pylint: disable=g-import-not-at-top
  from avflow_jax.models import bigvgan_checkpoint  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(seed)
  sd = {}
  for k, shape in bigvgan_checkpoint.state_dict_shapes(config).items():
    if k.endswith("filter"):
      sd[k] = bv.kaiser_sinc_filter().reshape(shape)
    elif k.endswith("weight_g"):
      sd[k] = rng.uniform(0.3, 0.8, shape).astype(np.float32)
    else:
      sd[k] = rng.normal(0, std, shape).astype(np.float32)
  return sd


def fake_asr_module(calls: list) -> types.ModuleType:
  """A stand-in for avflow_jax.models.asr with its API: deterministic (N_tok, 29) logits."""
  mod = types.ModuleType("avflow_jax.models.asr")

  def load_asr(path):
    calls.append(("load", path))
    return {"path": path}

  def extract_tokens(audio, sample_rate, params, **kwargs):
    del params, kwargs
    calls.append(("extract", len(audio), sample_rate))
    n = synthetic.n_tokens(len(audio) / sample_rate)
    base = np.linspace(-1, 1, n)[:, None] * (1 + np.arange(C.TOKEN_DIM))[None]
    return base.astype(np.float32)

  mod.load_asr, mod.extract_tokens = load_asr, extract_tokens
  return mod


def install_fake_asr(monkeypatch, calls: list) -> None:
  import avflow_jax.models  # pylint: disable=g-import-not-at-top
  fake = fake_asr_module(calls)
  monkeypatch.setitem(sys.modules, "avflow_jax.models.asr", fake)
  monkeypatch.setattr(avflow_jax.models, "asr", fake, raising=False)


def random_t2t_workdir(root, data_dir):
  """A text-to-tokens run (configs/text_to_tokens.py:tiny) with random weights."""
  from avflow_jax.training import random_init  # pylint: disable=g-import-not-at-top
  from configs import text_to_tokens as t2t_config  # pylint: disable=g-import-not-at-top
  return random_init.init_t2t_workdir(t2t_config.get_config("tiny"), root, data_dir)
