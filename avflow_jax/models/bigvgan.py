"""BigVGAN generator (base 22 kHz / 80-band) in Flax Linen: config, filters and network.

The generator maps a natural-log BigVGAN mel (B, T, 80) to a waveform (B, T * 256) at 22,050 Hz.
Layout is NWC (time before channels) throughout, so every 1-D conv is a Flax/XLA conv on
(B, T, C). The anti-aliased SnakeBeta activations (upsample x2 -> SnakeBeta -> downsample x2)
are written as polyphase sums over shifted slices: the 12-tap filters are fixed, so the two
6-tap phases are cheaper than zero-stuffed depthwise convolutions and fuse into one XLA loop.
Checkpoints (torch state-dict names) load through `bigvgan_checkpoint`.

Parameter tree (mirrors the torch module names, with "_" for "."):
  conv_pre/{kernel,bias}, ups_{i}/{kernel,bias},
  resblocks_{b}/{convs1_{m},convs2_{m}}/{kernel,bias}, resblocks_{b}/activations_{a}/{alpha,beta},
  activation_post/{alpha,beta}, conv_post/{kernel[,bias]}.
Conv kernels are (k, in, out); transposed-conv kernels are (k, in, out) in torch's (unflipped)
tap order.
"""

import dataclasses
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

# Fixed anti-aliasing filter of BigVGAN's Activation1d (ratio 2, 12 taps).
AA_TAPS = 12
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



def kaiser_sinc_filter(taps: int = AA_TAPS, cutoff: float = _AA_CUTOFF,
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


AA_FILTER = kaiser_sinc_filter()


def _upsample2(x: jax.Array, f: np.ndarray = AA_FILTER) -> jax.Array:
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


def _downsample2(x: jax.Array, f: np.ndarray = AA_FILTER) -> jax.Array:
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


def num_params(params) -> int:
  """Number of scalars in a parameter tree."""
  return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))
