"""BigVGAN checkpoints: torch state-dict names -> Flax params of `bigvgan.BigVGAN`.

Reads converted generator weights (`.safetensors` or `.npz`, within `core/safe_files`' limits)
and their `config.json`, lists the torch keys and shapes a weight-normed checkpoint holds, and
maps them to the Flax tree: weight norm (legacy `weight_g` / `weight_v`, parametrization
`original0` / `original1`, or a plain fused `weight`) is folded into each kernel, torch
Conv1d (out, in, k) and ConvTranspose1d (in, out, k) become (k, in, out), and the stored
anti-aliasing filters must be the Kaiser-sinc filter `bigvgan` recomputes.
"""

import os
from typing import Mapping

import jax.numpy as jnp
import numpy as np

from avflow_jax.core import safe_files
from avflow_jax.models import bigvgan


def config_from_json(path: str) -> bigvgan.BigVGANConfig:
  """Reads a BigVGAN `config.json` into a config (training-only keys are ignored).

  Args:
    path: the JSON file, read within `core/safe_files`' limits.

  Returns:
    The config.

  Raises:
    ValueError: the file cannot be read, is not a JSON object (`safe_files.UntrustedFileError`)
      or holds a bad config; the message names the file.
  """
  try:
    d = safe_files.read_json(path, what="BigVGAN config")
  except OSError as e:
    raise ValueError(f"{path}: cannot read BigVGAN config: {e}") from e
  if not isinstance(d, dict):
    raise safe_files.error(path, "BigVGAN config is not a JSON object")
  try:
    return bigvgan.BigVGANConfig.from_dict(d)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{path}: bad BigVGAN config: {e}") from e


def _conv_layers(config: bigvgan.BigVGANConfig):
  """Yields (torch prefix, flax path, kind, torch weight shape, has_bias) for every conv."""
  c = config
  yield "conv_pre", ("conv_pre",), "conv", (c.upsample_initial_channel, c.num_mels, 7), True
  n_k = len(c.resblock_kernel_sizes)
  for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes)):
    cin, cout = c.upsample_initial_channel // 2 ** i, c.upsample_initial_channel // 2 ** (i + 1)
    yield f"ups.{i}.0", (f"ups_{i}",), "convT", (cin, cout, k), True
    for j, (rk, rd) in enumerate(zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes)):
      b = i * n_k + j
      for m in range(len(rd)):
        for conv in ("convs1", "convs2"):
          yield (f"resblocks.{b}.{conv}.{m}", (f"resblocks_{b}", f"{conv}_{m}"), "conv",
                 (cout, cout, rk), True)
  ch = c.upsample_initial_channel // 2 ** len(c.upsample_rates)
  yield "conv_post", ("conv_post",), "conv", (1, ch, 7), c.use_bias_at_final


def _activation_layers(config: bigvgan.BigVGANConfig):
  """Yields (torch prefix, flax path, channels) for every anti-aliased activation."""
  c = config
  n_k = len(c.resblock_kernel_sizes)
  for i in range(len(c.upsample_rates)):
    ch = c.upsample_initial_channel // 2 ** (i + 1)
    for j, rd in enumerate(c.resblock_dilation_sizes):
      for a in range(2 * len(rd)):
        yield (f"resblocks.{i * n_k + j}.activations.{a}", (f"resblocks_{i * n_k + j}",
                                                            f"activations_{a}"), ch)
  ch = c.upsample_initial_channel // 2 ** len(c.upsample_rates)
  yield "activation_post", ("activation_post",), ch


def state_dict_shapes(
    config: bigvgan.BigVGANConfig = bigvgan.BigVGANConfig()) -> dict[str, tuple[int, ...]]:
  """Torch state-dict keys and shapes of a weight-normed BigVGAN checkpoint (incl. filters)."""
  shapes = {}
  for prefix, _, kind, wshape, has_bias in _conv_layers(config):
    shapes[f"{prefix}.weight_g"] = (wshape[0],) + (1,) * (len(wshape) - 1)
    shapes[f"{prefix}.weight_v"] = wshape
    if has_bias:
      shapes[f"{prefix}.bias"] = (wshape[1] if kind == "convT" else wshape[0],)
  for prefix, _, ch in _activation_layers(config):
    shapes[f"{prefix}.act.alpha"] = (ch,)
    if config.activation == "snakebeta":
      shapes[f"{prefix}.act.beta"] = (ch,)
    shapes[f"{prefix}.upsample.filter"] = (1, 1, bigvgan.AA_TAPS)
    shapes[f"{prefix}.downsample.lowpass.filter"] = (1, 1, bigvgan.AA_TAPS)
  return shapes


def _read_arrays(path: str) -> dict[str, np.ndarray]:
  """The arrays of a weights file, read within `core/safe_files`' limits (sizes, pickles)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"BigVGAN weights not found: {path}")
  # The readers' UntrustedFileError already names the file in one line; it passes unchanged.
  if path.endswith(".safetensors"):
    arrays = safe_files.load_safetensors(path)
  elif path.endswith(".npz"):
    arrays = safe_files.load_npz(path)
  else:
    raise ValueError(f"{path}: cannot read BigVGAN weights: expected a .safetensors or .npz "
                     "file (convert torch .pt checkpoints with "
                     "`python -m avflow_jax.convert_bigvgan`)")
  # Accept a saved {"generator": state_dict} flattened with a "generator." prefix.
  if arrays and all(k.startswith("generator.") for k in arrays):
    arrays = {k[len("generator."):]: v for k, v in arrays.items()}
  return arrays


def _pop_weight(sd: dict, prefix: str, src: str) -> np.ndarray:
  """Returns the fused weight of `prefix`, removing its entries from `sd`.

  Accepts the legacy weight-norm names (weight_g / weight_v), the parametrization names
  (parametrizations.weight.original0 / original1) and plain `weight` (norm already removed).
  Fusion: w = g * v / ||v||, the norm taken over every axis but 0 (out channels for Conv1d,
  in channels for ConvTranspose1d, as torch's weight_norm(dim=0) does).
  """
  spellings = ((f"{prefix}.weight_g", f"{prefix}.weight_v"),
               (f"{prefix}.parametrizations.weight.original0",
                f"{prefix}.parametrizations.weight.original1"))
  for g_key, v_key in spellings:
    if g_key in sd or v_key in sd:
      if g_key not in sd or v_key not in sd:
        missing = g_key if g_key not in sd else v_key
        raise KeyError(f"{src}: missing key {missing!r}")
      g = sd.pop(g_key).astype(np.float64)
      v = sd.pop(v_key).astype(np.float64)
      if g.shape != (v.shape[0],) + (1,) * (v.ndim - 1):
        raise ValueError(f"{src}: {g_key} has shape {g.shape}, expected "
                         f"{(v.shape[0],) + (1,) * (v.ndim - 1)} for {v_key} {v.shape}")
      norm = np.sqrt(np.sum(v * v, axis=tuple(range(1, v.ndim)), keepdims=True))
      return (g * v / norm).astype(np.float32)
  if f"{prefix}.weight" in sd:
    return sd.pop(f"{prefix}.weight").astype(np.float32)
  raise KeyError(f"{src}: missing key {prefix + '.weight_g'!r} (or {prefix + '.weight_v'!r}, "
                 f"'.parametrizations.weight.original0/1', '.weight')")


def _take(sd, key, shape, src):
  if key not in sd:
    raise KeyError(f"{src}: missing key {key!r}")
  a = sd.pop(key)
  if tuple(a.shape) != tuple(shape):
    raise ValueError(f"{src}: {key} has shape {tuple(a.shape)}, expected {tuple(shape)}")
  return np.asarray(a, np.float32)


def _set(tree, path, leaf):
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = leaf


def params_from_state_dict(state_dict: Mapping[str, np.ndarray],
                           config: bigvgan.BigVGANConfig = bigvgan.BigVGANConfig(),
                           source: str = "state_dict") -> dict:
  """Maps a torch BigVGAN generator state dict (numpy arrays) to Flax params.

  Args:
    state_dict: torch key -> array (weight-normed, parametrized or fused weights).
    config: the generator config the checkpoint was trained with.
    source: a name for error messages (e.g. the file path).

  Returns:
    The params tree for `BigVGAN(config).apply({"params": params}, mel)`.

  Raises:
    KeyError / ValueError naming the missing, mismatched or unexpected keys.
  """
  sd = {k: np.asarray(v) for k, v in state_dict.items()}
  params: dict = {}
  for prefix, path, kind, wshape, has_bias in _conv_layers(config):
    w = _pop_weight(sd, prefix, source)
    if w.shape != wshape:
      raise ValueError(f"{source}: {prefix} weight has shape {w.shape}, expected {wshape} "
                       "(does the config.json match the checkpoint?)")
    # torch Conv1d (out, in, k) and ConvTranspose1d (in, out, k) -> (k, in, out).
    kernel = w.transpose(2, 1, 0) if kind == "conv" else w.transpose(2, 0, 1)
    _set(params, path + ("kernel",), jnp.asarray(kernel))
    if has_bias:
      _set(params, path + ("bias",), jnp.asarray(_take(sd, f"{prefix}.bias", (kernel.shape[2],),
                                                       source)))
  for prefix, path, ch in _activation_layers(config):
    names = ("alpha", "beta") if config.activation == "snakebeta" else ("alpha",)
    for n in names:
      _set(params, path + (n,), jnp.asarray(_take(sd, f"{prefix}.act.{n}", (ch,), source)))
    for fkey in (f"{prefix}.upsample.filter", f"{prefix}.downsample.lowpass.filter"):
      if fkey in sd:  # buffers: optional, but must be the filter we recompute
        f = sd.pop(fkey)
        if (f.shape != (1, 1, bigvgan.AA_TAPS)
            or not np.allclose(f.reshape(-1), bigvgan.AA_FILTER, atol=1e-6)):
          raise ValueError(f"{source}: {fkey} differs from the Kaiser-sinc filter this port uses "
                           f"(got shape {f.shape})")
  if sd:
    extra = sorted(sd)
    raise ValueError(f"{source}: {len(extra)} unexpected keys (config mismatch?): "
                     f"{extra[:8]}{' ...' if len(extra) > 8 else ''}")
  return params


def load_bigvgan(path: str, config: bigvgan.BigVGANConfig | None = None
                 ) -> tuple[bigvgan.BigVGANConfig, dict]:
  """Loads converted BigVGAN generator weights.

  Args:
    path: `.safetensors` or `.npz` holding the torch state-dict keys (see
      `avflow_jax.convert_bigvgan` for `.pt` checkpoints).
    config: overrides the config; by default read from `config.json` next to the weights,
      else the base 22 kHz / 80-band config.

  Returns:
    (config, params) for `BigVGAN(config).apply({"params": params}, log_mel)`.
  """
  if config is None:
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    config = config_from_json(cfg_path) if os.path.exists(cfg_path) else bigvgan.BigVGANConfig()
  return config, params_from_state_dict(_read_arrays(path), config, source=path)
