"""BigVGAN generator (base 22 kHz / 80-band) in Flax Linen, plus a checkpoint loader.

The generator maps a natural-log BigVGAN mel (B, T, 80) to a waveform (B, T * 256) at 22,050 Hz.
Layout is NWC (time before channels) throughout, so every 1-D conv is a Flax/XLA conv on
(B, T, C). The anti-aliased SnakeBeta activations (upsample x2 -> SnakeBeta -> downsample x2)
are written as polyphase sums over shifted slices: the 12-tap filters are fixed, so the two
6-tap phases are cheaper than zero-stuffed depthwise convolutions and fuse into one XLA loop.

Parameter tree (mirrors the torch module names, with "_" for "."):
  conv_pre/{kernel,bias}, ups_{i}/{kernel,bias},
  resblocks_{b}/{convs1_{m},convs2_{m}}/{kernel,bias}, resblocks_{b}/activations_{a}/{alpha,beta},
  activation_post/{alpha,beta}, conv_post/{kernel[,bias]}.
Conv kernels are (k, in, out); transposed-conv kernels are (k, in, out) in torch's (unflipped)
tap order.
"""

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from avflow_jax.core import safe_files

# Fixed anti-aliasing filter of BigVGAN's Activation1d (ratio 2, 12 taps).
_AA_TAPS = 12
_AA_CUTOFF = 0.25
_AA_HALF_WIDTH = 0.3


@dataclasses.dataclass(frozen=True)
class BigVGANConfig:
  """Generator hyper-parameters; defaults are `bigvgan_base_22khz_80band`."""
  num_mels: int = 80
  upsample_rates: Sequence[int] = (8, 8, 2, 2)
  upsample_kernel_sizes: Sequence[int] = (16, 16, 4, 4)
  upsample_initial_channel: int = 512
  resblock: str = "1"
  resblock_kernel_sizes: Sequence[int] = (3, 7, 11)
  resblock_dilation_sizes: Sequence[Sequence[int]] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
  activation: str = "snakebeta"
  snake_logscale: bool = True
  use_tanh_at_final: bool = True
  use_bias_at_final: bool = True
  sampling_rate: int = 22050

  def __post_init__(self):
    # Freeze lists from JSON into tuples so the config stays hashable (jit static arg).
    object.__setattr__(self, "upsample_rates", tuple(int(u) for u in self.upsample_rates))
    object.__setattr__(self, "upsample_kernel_sizes",
                       tuple(int(k) for k in self.upsample_kernel_sizes))
    object.__setattr__(self, "resblock_kernel_sizes",
                       tuple(int(k) for k in self.resblock_kernel_sizes))
    object.__setattr__(self, "resblock_dilation_sizes",
                       tuple(tuple(int(d) for d in ds) for ds in self.resblock_dilation_sizes))
    object.__setattr__(self, "resblock", str(self.resblock))
    if self.resblock != "1":
      raise ValueError(f"BigVGANConfig.resblock={self.resblock!r}: only AMPBlock1 ('1') is ported")
    if self.activation not in ("snake", "snakebeta"):
      raise ValueError(f"BigVGANConfig.activation={self.activation!r}: "
                       "expected 'snake' or 'snakebeta'")
    if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
      raise ValueError("BigVGANConfig: upsample_rates and upsample_kernel_sizes differ in length")
    if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
      raise ValueError("BigVGANConfig: resblock_kernel_sizes and resblock_dilation_sizes differ "
                       "in length")
    for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes):
      if k - 2 * ((k - u) // 2) != u:
        raise ValueError(f"BigVGANConfig: upsample kernel {k} / rate {u} does not give an exact "
                         f"x{u} length")
    if self.upsample_initial_channel % (2 ** len(self.upsample_rates)):
      raise ValueError("BigVGANConfig.upsample_initial_channel must be divisible by "
                       f"2**{len(self.upsample_rates)}")

  @property
  def hop_length(self) -> int:
    return int(np.prod(self.upsample_rates))

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "BigVGANConfig":
    """Builds a config from a BigVGAN `config.json` dict; training-only keys are ignored."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in d.items() if k in names})

  @classmethod
  def from_json(cls, path: str) -> "BigVGANConfig":
    try:
      d = safe_files.read_json(path, what="BigVGAN config")
    except OSError as e:
      raise ValueError(f"{path}: cannot read BigVGAN config: {e}") from e
    if not isinstance(d, dict):
      raise safe_files.error(path, "BigVGAN config is not a JSON object")
    try:
      return cls.from_dict(d)
    except (TypeError, ValueError) as e:
      raise ValueError(f"{path}: bad BigVGAN config: {e}") from e


def kaiser_sinc_filter(taps: int = _AA_TAPS, cutoff: float = _AA_CUTOFF,
                       half_width: float = _AA_HALF_WIDTH) -> np.ndarray:
  """Kaiser-windowed sinc low-pass filter (even length), normalised to unit DC gain.

  Args:
    taps: filter length (even).
    cutoff: cutoff frequency as a fraction of the sampling rate.
    half_width: transition half-width, same unit.

  Returns:
    float32 array (taps,).
  """
  if taps % 2:
    raise ValueError("kaiser_sinc_filter: only even lengths are used by BigVGAN")
  half = taps // 2
  # Kaiser's design formula for the attenuation A of a window of this length and width.
  atten = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
  if atten > 50.0:
    beta = 0.1102 * (atten - 8.7)
  elif atten >= 21.0:
    beta = 0.5842 * (atten - 21.0) ** 0.4 + 0.07886 * (atten - 21.0)
  else:
    beta = 0.0
  window = np.kaiser(taps, beta)  # symmetric window
  t = np.arange(-half, half) + 0.5  # even length: taps sit between integer times
  h = 2 * cutoff * window * np.sinc(2 * cutoff * t)
  return (h / h.sum()).astype(np.float32)


_FILTER = kaiser_sinc_filter()


def _upsample2(x: jax.Array, f: np.ndarray = _FILTER) -> jax.Array:
  """Anti-aliased x2 upsampling along axis 1 of (B, T, C): (B, 2T, C).

  Same result as replicate-pad 5, transposed conv (stride 2) with `f`, x2, crop 15 per side.
  Output sample 2n takes the odd taps, 2n + 1 the even taps (polyphase form).
  """
  t = x.shape[1]
  z = jnp.pad(x, ((0, 0), (5, 5), (0, 0)), mode="edge")  # z[i] = x[clip(i - 5)]
  odd = sum(2.0 * float(f[2 * j + 1]) * z[:, 7 - j:7 - j + t] for j in range(6))
  even = sum(2.0 * float(f[2 * j]) * z[:, 8 - j:8 - j + t] for j in range(6))
  y = jnp.stack([odd, even], axis=2)  # (B, T, 2, C): phase 0 = sample 2n
  return y.reshape(x.shape[0], 2 * t, x.shape[2])


def _downsample2(x: jax.Array, f: np.ndarray = _FILTER) -> jax.Array:
  """Anti-aliased x2 downsampling along axis 1 of (B, 2T, C): (B, T, C).

  Same result as replicate-pad 5 left / 6 right, then a stride-2 correlation with `f`.
  """
  t = x.shape[1] // 2
  w = jnp.pad(x, ((0, 0), (5, 6), (0, 0)), mode="edge")  # length 2T + 11
  we, wo = w[:, 0::2], w[:, 1::2]  # lengths T + 6 and T + 5
  return sum(float(f[2 * j]) * we[:, j:j + t] + float(f[2 * j + 1]) * wo[:, j:j + t]
             for j in range(6))


class AntiAliasSnake(nn.Module):
  """Activation1d: upsample x2 -> Snake/SnakeBeta (per-channel params) -> downsample x2."""
  channels: int
  kind: str = "snakebeta"
  logscale: bool = True

  @nn.compact
  def __call__(self, x):
    init = nn.initializers.zeros if self.logscale else nn.initializers.ones
    alpha = self.param("alpha", init, (self.channels,), jnp.float32)
    if self.kind == "snakebeta":
      beta = self.param("beta", init, (self.channels,), jnp.float32)
    else:
      beta = alpha  # Snake: the magnitude is 1/alpha.
    if self.logscale:
      alpha, beta = jnp.exp(alpha), jnp.exp(beta)
    x = _upsample2(x)
    x = x + jnp.sin(x * alpha) ** 2 / (beta + 1e-9)
    return _downsample2(x)


class ConvTranspose1d(nn.Module):
  """Torch-equivalent ConvTranspose1d(in, out, k, stride, padding) on NWC input.

  Kernel stored as (k, in, out) in torch tap order; applied as a correlation of the stride-dilated
  input with the flipped kernel and (k - 1 - padding) padding on both sides.
  """
  features: int
  kernel_size: int
  stride: int
  padding: int

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    pad = k - 1 - self.padding
    y = lax.conv_general_dilated(
        x, kernel[::-1], window_strides=(1,), padding=[(pad, pad)],
        lhs_dilation=(self.stride,), dimension_numbers=("NWC", "WIO", "NWC"))
    return y + bias


def _conv(features, k, dilation=1, use_bias=True, name=None):
  pad = (k * dilation - dilation) // 2
  return nn.Conv(features, (k,), kernel_dilation=(dilation,), padding=[(pad, pad)],
                 use_bias=use_bias, name=name)


class AMPBlock1(nn.Module):
  """x <- x + conv2(act2(conv1_d(act1(x)))) for each dilation d."""
  channels: int
  kernel_size: int
  dilations: Sequence[int]
  activation: str
  logscale: bool

  @nn.compact
  def __call__(self, x):
    def act(a):  # even a: before convs1[m], odd a: before convs2[m] (torch numbering)
      return AntiAliasSnake(self.channels, self.activation, self.logscale,
                            name=f"activations_{a}")
    for m, d in enumerate(self.dilations):
      xt = act(2 * m)(x)
      xt = _conv(self.channels, self.kernel_size, d, name=f"convs1_{m}")(xt)
      xt = act(2 * m + 1)(xt)
      xt = _conv(self.channels, self.kernel_size, 1, name=f"convs2_{m}")(xt)
      x = x + xt
    return x


class BigVGAN(nn.Module):
  """BigVGAN generator: log-mel (B, T, num_mels) -> waveform (B, T * hop_length)."""
  config: BigVGANConfig = BigVGANConfig()

  @nn.compact
  def __call__(self, mel):
    c = self.config
    if mel.ndim != 3 or mel.shape[-1] != c.num_mels:
      raise ValueError(f"BigVGAN expects (B, T, {c.num_mels}) log-mels, got {mel.shape}")
    x = _conv(c.upsample_initial_channel, 7, name="conv_pre")(mel.astype(jnp.float32))
    n_k = len(c.resblock_kernel_sizes)
    ch = c.upsample_initial_channel
    for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes)):
      ch = c.upsample_initial_channel // 2 ** (i + 1)
      x = ConvTranspose1d(ch, k, u, (k - u) // 2, name=f"ups_{i}")(x)
      xs = [AMPBlock1(ch, rk, rd, c.activation, c.snake_logscale,
                      name=f"resblocks_{i * n_k + j}")(x)
            for j, (rk, rd) in enumerate(zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes))]
      x = sum(xs) / n_k  # mean of the multi-receptive-field blocks
    x = AntiAliasSnake(ch, c.activation, c.snake_logscale, name="activation_post")(x)
    x = _conv(1, 7, use_bias=c.use_bias_at_final, name="conv_post")(x)
    x = jnp.tanh(x) if c.use_tanh_at_final else jnp.clip(x, -1.0, 1.0)
    return x[..., 0]


# ------------------------------------------------------------------------------------------------
# Checkpoint loading (torch state-dict names -> Flax params).
# ------------------------------------------------------------------------------------------------

def _conv_layers(config: BigVGANConfig):
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


def _activation_layers(config: BigVGANConfig):
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


def state_dict_shapes(config: BigVGANConfig = BigVGANConfig()) -> dict[str, tuple[int, ...]]:
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
    shapes[f"{prefix}.upsample.filter"] = (1, 1, _AA_TAPS)
    shapes[f"{prefix}.downsample.lowpass.filter"] = (1, 1, _AA_TAPS)
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
                           config: BigVGANConfig = BigVGANConfig(),
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
        if f.shape != (1, 1, _AA_TAPS) or not np.allclose(f.reshape(-1), _FILTER, atol=1e-6):
          raise ValueError(f"{source}: {fkey} differs from the Kaiser-sinc filter this port uses "
                           f"(got shape {f.shape})")
  if sd:
    extra = sorted(sd)
    raise ValueError(f"{source}: {len(extra)} unexpected keys (config mismatch?): "
                     f"{extra[:8]}{' ...' if len(extra) > 8 else ''}")
  return params


def load_bigvgan(path: str, config: BigVGANConfig | None = None) -> tuple[BigVGANConfig, dict]:
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
    config = BigVGANConfig.from_json(cfg_path) if os.path.exists(cfg_path) else BigVGANConfig()
  return config, params_from_state_dict(_read_arrays(path), config, source=path)


def num_params(params) -> int:
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))
