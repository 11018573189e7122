"""Hugging Face wav2vec2 CTC checkpoints -> `Wav2Vec2Config` and the Flax parameter tree.

Reads a `model.safetensors` (and its `config.json`, when present) without torch: the HF config
keys this port supports, the HF state-dict key -> Flax path mapping with its layout transforms
(torch Linear (out, in) -> Dense (in, out), Conv1d (out, in, k) -> (k, in, out)), and the fold
of the positional convolution's weight norm (either torch spelling) into a plain kernel. The
network itself is `avflow_jax.models.wav2vec2`.
"""

import os
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np

from avflow_jax.core import safe_files
from avflow_jax.models import wav2vec2

# HF config.json keys we read, and the values of other keys we require (unsupported variants).
_HF_CONFIG_KEYS = ("conv_dim", "conv_kernel", "conv_stride", "conv_bias", "hidden_size",
                   "num_hidden_layers", "num_attention_heads", "intermediate_size",
                   "num_conv_pos_embeddings", "num_conv_pos_embedding_groups", "layer_norm_eps",
                   "vocab_size")
_HF_CONFIG_REQUIRED = {"feat_extract_norm": "group", "do_stable_layer_norm": False,
                       "hidden_act": "gelu", "feat_extract_activation": "gelu",
                       "add_adapter": False}


def config_from_hf_dict(hf: Mapping[str, Any],
                        source: str = "config.json") -> wav2vec2.Wav2Vec2Config:
  """Builds a `Wav2Vec2Config` from a Hugging Face `config.json` dict.

  Args:
    hf: the parsed JSON. Missing keys take the base-960h defaults (as in HF's own config class).
    source: file name used in error messages.

  Returns:
    The config.

  Raises:
    ValueError: if the config asks for a variant this port does not implement (layer-norm
      feature encoder, pre-LN "stable" encoder, non-GELU activations, adapters).
  """
  for key, want in _HF_CONFIG_REQUIRED.items():
    if key in hf and hf[key] != want:
      raise ValueError(f"{source}: {key}={hf[key]!r} is not supported by this wav2vec2 port "
                       f"(only {want!r}, the wav2vec2-base-960h architecture).")
  kwargs = {k: hf[k] for k in _HF_CONFIG_KEYS if k in hf}
  try:
    return wav2vec2.Wav2Vec2Config(**kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{source}: invalid wav2vec2 config: {e}") from e


def _linear(w):
  return np.ascontiguousarray(w.T)  # torch Linear (out, in) -> Dense kernel (in, out).


def _conv(w):
  return np.ascontiguousarray(w.transpose(2, 1, 0))  # torch (out, in, k) -> (k, in, out).


def _identity(w):
  return w


def _expected_keys(cfg: wav2vec2.Wav2Vec2Config):
  """HF key -> (Flax path, transform, expected HF shape) for every plain (non weight-norm) key."""
  out = {}

  def linear(hf, path, n_in, n_out):
    out[hf + ".weight"] = (path + ("kernel",), _linear, (n_out, n_in))
    out[hf + ".bias"] = (path + ("bias",), _identity, (n_out,))

  def norm(hf, path, n):
    out[hf + ".weight"] = (path + ("scale",), _identity, (n,))
    out[hf + ".bias"] = (path + ("bias",), _identity, (n,))

  c_in = 1
  for i, (c, k) in enumerate(zip(cfg.conv_dim, cfg.conv_kernel)):
    hf = f"wav2vec2.feature_extractor.conv_layers.{i}"
    path = ("feature_extractor", f"conv_layers_{i}")
    out[hf + ".conv.weight"] = (path + ("kernel",), _conv, (c, c_in, k))
    if cfg.conv_bias:
      out[hf + ".conv.bias"] = (path + ("bias",), _identity, (c,))
    if i == 0:
      out[hf + ".layer_norm.weight"] = (path + ("norm_scale",), _identity, (c,))
      out[hf + ".layer_norm.bias"] = (path + ("norm_bias",), _identity, (c,))
    c_in = c
  h = cfg.hidden_size
  norm("wav2vec2.feature_projection.layer_norm", ("feature_projection_layer_norm",), c_in)
  linear("wav2vec2.feature_projection.projection", ("feature_projection",), c_in, h)
  out["wav2vec2.encoder.pos_conv_embed.conv.bias"] = (("pos_conv_embed", "bias"), _identity, (h,))
  norm("wav2vec2.encoder.layer_norm", ("encoder_layer_norm",), h)
  for i in range(cfg.num_hidden_layers):
    hf = f"wav2vec2.encoder.layers.{i}"
    path = (f"layers_{i}",)
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
      linear(f"{hf}.attention.{name}", path + ("attention", name), h, h)
    norm(hf + ".layer_norm", path + ("layer_norm",), h)
    linear(hf + ".feed_forward.intermediate_dense", path + ("intermediate_dense",), h,
           cfg.intermediate_size)
    linear(hf + ".feed_forward.output_dense", path + ("output_dense",), cfg.intermediate_size, h)
    norm(hf + ".final_layer_norm", path + ("final_layer_norm",), h)
  linear("lm_head", ("lm_head",), h, cfg.vocab_size)
  return out


_POS_CONV = "wav2vec2.encoder.pos_conv_embed.conv."
# (g, v) spellings of torch weight norm: legacy `weight_norm` and `parametrizations.weight_norm`.
_WEIGHT_NORM_SPELLINGS = (("weight_g", "weight_v"),
                          ("parametrizations.weight.original0",
                           "parametrizations.weight.original1"))
# Present in HF checkpoints but unused at inference (the SpecAugment mask embedding).
_IGNORED_KEYS = ("wav2vec2.masked_spec_embed",)


def _set(tree, path, value):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def params_from_hf_state(cfg: wav2vec2.Wav2Vec2Config, state: Mapping[str, np.ndarray],
                         source: str = "state dict") -> wav2vec2.Params:
  """Maps a Hugging Face `Wav2Vec2ForCTC` state dict (numpy arrays) to the Flax tree.

  Args:
    cfg: architecture the state dict must match.
    state: HF key -> array.
    source: name used in error messages (the file path).

  Returns:
    Nested dict of float32 jnp arrays for `Wav2Vec2ForCTC(cfg)`.

  Raises:
    ValueError: naming every missing / unexpected key and shape mismatch.
  """
  expected = _expected_keys(cfg)
  h, k, g = cfg.hidden_size, cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups
  wn = [sp for sp in _WEIGHT_NORM_SPELLINGS if any(_POS_CONV + n in state for n in sp)]
  if len(wn) > 1:
    raise ValueError(f"{source}: both weight-norm spellings of the positional conv are present.")
  g_name, v_name = wn[0] if wn else _WEIGHT_NORM_SPELLINGS[0]
  wn_shapes = {_POS_CONV + g_name: (1, 1, k), _POS_CONV + v_name: (h, h // g, k)}

  missing = [n for n in list(expected) + list(wn_shapes) if n not in state]
  unexpected = sorted(n for n in state
                      if n not in expected and n not in wn_shapes and n not in _IGNORED_KEYS)
  all_shapes = {n: e[2] for n, e in expected.items()} | wn_shapes
  bad_shapes = [f"{n}: file {tuple(state[n].shape)}, expected {all_shapes[n]}"
                for n in all_shapes if n in state and tuple(state[n].shape) != all_shapes[n]]
  problems = []
  if missing:
    problems.append(f"missing keys {missing}")
  if unexpected:
    problems.append(f"unexpected keys {unexpected}")
  if bad_shapes:
    problems.append(f"shape mismatches {bad_shapes}")
  if problems:
    raise ValueError(f"{source}: checkpoint does not match the wav2vec2 config "
                     f"({cfg}): " + "; ".join(problems))

  params = {}
  for name, (path, fn, _) in expected.items():
    _set(params, path, jnp.asarray(fn(np.asarray(state[name], np.float32))))
  # Fold torch weight norm over dim=2: w[:, :, j] = g[j] * v[:, :, j] / |v[:, :, j]|.
  wg = np.asarray(state[_POS_CONV + g_name], np.float64)
  wv = np.asarray(state[_POS_CONV + v_name], np.float64)
  w = wg * wv / np.sqrt(np.sum(np.square(wv), axis=(0, 1), keepdims=True))
  _set(params, ("pos_conv_embed", "kernel"), jnp.asarray(_conv(w).astype(np.float32)))
  return params


def load_wav2vec2(path: str):
  """Loads a Hugging Face wav2vec2 CTC checkpoint without torch.

  Args:
    path: a `model.safetensors` file, or a directory holding one. `config.json` in the same
      directory is used when present; otherwise the base-960h defaults apply.

  Returns:
    (config, params): `Wav2Vec2Config` and the Flax parameter tree.

  Raises:
    FileNotFoundError: no safetensors file at `path`.
    ValueError: unsupported config or key/shape mismatches (naming the file and the keys);
      `safe_files.UntrustedFileError` for a malformed or oversized file.
  """
  if os.path.isdir(path):
    path = os.path.join(path, "model.safetensors")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"wav2vec2 weights not found: {path} (expected a HF "
                            "model.safetensors; .bin/.pt pickles are not read)")
  config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
  if os.path.isfile(config_path):
    hf_config = safe_files.read_json(config_path, what="wav2vec2 config")
    if not isinstance(hf_config, dict):
      raise safe_files.error(config_path, "wav2vec2 config is not a JSON object")
    config = config_from_hf_dict(hf_config, config_path)
  else:
    config = wav2vec2.Wav2Vec2Config()
  # Checks the header's sizes against the file and the limits before safetensors reads it.
  state = safe_files.load_safetensors(path)
  return config, params_from_hf_state(config, state, path)
