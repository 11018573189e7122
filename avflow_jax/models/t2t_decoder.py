"""The text-to-tokens flow-matching decoder: Matcha-TTS's 1-D U-Net velocity estimator.

`UNetEstimator` predicts the flow velocity v(x_t, mu, t) on the frame grid (B, T, C),
channels-last and masked: ResNet blocks (Conv -> GroupNorm -> Mish, plus a time MLP) and
diffusers-style transformer blocks (pre-norm self-attention + SnakeBeta feed-forward) at each
U-Net level. Also holds `attend`, the masked scaled dot-product attention that the text
encoder's self-attention (`text_to_tokens.RopeSelfAttention`) shares.

Padding semantics (see the `text_to_tokens` module docstring): by default attention masks padded
keys and GroupNorm statistics cover valid frames only; with `official_padding` the 0/1 frame
mask is an additive score bias and GroupNorm covers every frame, as the reference decoder does.

Imports nothing from the package (it sits under `text_to_tokens` in the import graph).
"""

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Matcha's decoder re-initialises convs and linears with kaiming normal (ReLU gain).
_kaiming = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def attend(q, k, v, key_mask, probs_dropout=None, mask_as_bias=False):
  """Scaled dot-product attention over (B, T, H, D).

  Args:
    q, k, v: (B, T, H, D) queries, keys and values.
    key_mask: (B, T) 0/1 key mask.
    probs_dropout: optional dropout on the attention probabilities.
    mask_as_bias: add the mask to the scores (valid keys +1, padded +0, none masked), as the
      reference decoder's diffusers attention does with a float mask; else padded keys are
      masked out.

  Returns:
    (B, T, H, D) attention output.
  """
  scores = jnp.einsum("bqhd,bkhd->bhqk", q / math.sqrt(q.shape[-1]), k)
  if mask_as_bias:
    scores = scores + key_mask[:, None, None, :]
  else:
    scores = jnp.where(key_mask[:, None, None, :] > 0, scores, -1e4)
  probs = jax.nn.softmax(scores, axis=-1)
  if probs_dropout is not None:
    probs = probs_dropout(probs)
  return jnp.einsum("bhqk,bkhd->bqhd", probs, v)


def mish(x):
  """Mish activation, x * tanh(softplus(x))."""
  return x * jnp.tanh(jax.nn.softplus(x))


def sinusoidal_embedding(t: jax.Array, dim: int, scale: float = 1000.0) -> jax.Array:
  """(B,) times in [0, 1] -> (B, dim) [sin, cos] features of scale * t."""
  half = dim // 2
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / (half - 1)))
  args = scale * t[:, None].astype(jnp.float32) * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


class Block1D(nn.Module):
  """Conv k3 -> GroupNorm(8) over valid frames (all frames if official_padding) -> Mish, masked."""
  channels: int
  groups: int = 8
  official_padding: bool = False

  @nn.compact
  def __call__(self, x, mask):
    x = nn.Conv(self.channels, (3,), padding="SAME", kernel_init=_kaiming)(x * mask)
    norm_mask = None if self.official_padding else jnp.broadcast_to(mask > 0, x.shape)
    x = nn.GroupNorm(num_groups=self.groups, epsilon=1e-5, use_fast_variance=False)(
        x, mask=norm_mask)
    return mish(x) * mask


class ResnetBlock1D(nn.Module):
  """Block1D -> + time MLP -> Block1D, plus a 1x1 residual projection."""
  channels: int
  groups: int = 8
  official_padding: bool = False

  @nn.compact
  def __call__(self, x, mask, temb):
    h = Block1D(self.channels, self.groups, self.official_padding)(x, mask)
    h = h + nn.Dense(self.channels, kernel_init=_kaiming)(mish(temb))[:, None, :]
    h = Block1D(self.channels, self.groups, self.official_padding)(h, mask)
    return h + nn.Dense(self.channels, kernel_init=_kaiming, name="res_conv")(x * mask)


class SnakeBeta(nn.Module):
  """Linear projection then x + 1/beta * sin^2(alpha x), alpha and beta in log scale."""
  features: int

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(self.features, kernel_init=_kaiming)(x)
    alpha = jnp.exp(self.param("alpha", nn.initializers.zeros, (self.features,)))
    beta = jnp.exp(self.param("beta", nn.initializers.zeros, (self.features,)))
    return x + (1.0 / (beta + 1e-9)) * jnp.sin(x * alpha) ** 2


class TransformerBlock(nn.Module):
  """Pre-norm self-attention + SnakeBeta feed-forward (diffusers' BasicTransformerBlock)."""
  n_heads: int
  head_dim: int
  dropout: float
  ff_mult: int = 4
  official_padding: bool = False  # The mask is an additive score bias (see `attend`).

  @nn.compact
  def __call__(self, x, mask, train):
    b, t, c = x.shape
    inner = self.n_heads * self.head_dim
    h = nn.LayerNorm(epsilon=1e-5, name="norm1")(x)
    split = lambda y: y.reshape(b, t, self.n_heads, self.head_dim)
    q, k, v = (split(nn.Dense(inner, use_bias=False, kernel_init=_kaiming, name=n)(h))
               for n in ("to_q", "to_k", "to_v"))
    att = attend(q, k, v, mask[..., 0], mask_as_bias=self.official_padding)
    att = att.reshape(b, t, inner)
    att = nn.Dense(c, kernel_init=_kaiming, name="to_out")(att)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(att)
    h = nn.LayerNorm(epsilon=1e-5, name="norm3")(x)
    h = SnakeBeta(c * self.ff_mult, name="ff_act")(h)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    return x + nn.Dense(c, kernel_init=_kaiming, name="ff_out")(h)


class UNetEstimator(nn.Module):
  """1-D U-Net velocity field v(x_t, mu, t) (Matcha's Decoder), masked, any length.

  With `official_padding` the padded frames enter attention and GroupNorm as in the reference
  (see the module docstring); the output is masked either way.
  """
  n_feats: int
  channels: Sequence[int] = (256, 256)
  n_heads: int = 2
  head_dim: int = 64
  dropout: float = 0.05
  n_blocks: int = 1
  n_mid_blocks: int = 2
  official_padding: bool = False

  def _transformers(self, h, mask, train, prefix):
    for j in range(self.n_blocks):
      h = TransformerBlock(self.n_heads, self.head_dim, self.dropout,
                           official_padding=self.official_padding, name=f"{prefix}_tf{j}")(
                               h, mask, train)
    return h

  def _resnet(self, ch, name, h, mask, temb):
    return ResnetBlock1D(ch, official_padding=self.official_padding, name=name)(h, mask, temb)

  @nn.compact
  def __call__(self, x, mask, mu, t, train):
    n_frames = x.shape[1]
    # Each downsampling halves the length: pad to a multiple so skips line up, crop after.
    factor = 2 ** (len(self.channels) - 1)
    pad = (-n_frames) % factor
    if pad:
      x, mu, mask = (jnp.pad(a, ((0, 0), (0, pad), (0, 0))) for a in (x, mu, mask))
    temb = sinusoidal_embedding(t, 2 * self.n_feats)
    temb_dim = 4 * self.channels[0]
    temb = nn.Dense(temb_dim, kernel_init=_kaiming, name="time_mlp_1")(temb)
    temb = nn.Dense(temb_dim, kernel_init=_kaiming, name="time_mlp_2")(nn.silu(temb))

    h = jnp.concatenate([x, mu], axis=-1)
    hiddens, masks = [], [mask]
    n_levels = len(self.channels)
    for i, ch in enumerate(self.channels):
      m = masks[-1]
      h = self._resnet(ch, f"down{i}_res", h, m, temb)
      h = self._transformers(h, m, train, f"down{i}")
      hiddens.append(h)
      if i < n_levels - 1:
        h = nn.Conv(ch, (3,), strides=(2,), padding=((1, 1),), kernel_init=_kaiming,
                    name=f"down{i}_sample")(h * m)
        masks.append(m[:, ::2])
      else:
        h = nn.Conv(ch, (3,), padding="SAME", kernel_init=_kaiming, name=f"down{i}_sample")(
            h * m)
    m = masks[-1]
    for i in range(self.n_mid_blocks):
      h = self._resnet(self.channels[-1], f"mid{i}_res", h, m, temb)
      h = self._transformers(h, m, train, f"mid{i}")
    up_channels = tuple(self.channels[::-1]) + (self.channels[0],)
    for i in range(n_levels):
      m = masks.pop()
      ch = up_channels[i + 1]
      h = self._resnet(ch, f"up{i}_res", jnp.concatenate([h, hiddens.pop()], axis=-1), m,
                       temb)
      h = self._transformers(h, m, train, f"up{i}")
      if i < n_levels - 1:
        h = nn.ConvTranspose(ch, (4,), strides=(2,), padding="SAME", kernel_init=_kaiming,
                             name=f"up{i}_sample")(h * m)
      else:
        h = nn.Conv(ch, (3,), padding="SAME", kernel_init=_kaiming, name=f"up{i}_sample")(
            h * m)
    h = Block1D(up_channels[-1], official_padding=self.official_padding,
                name="final_block")(h, m)
    out = nn.Dense(self.n_feats, kernel_init=_kaiming, name="final_proj")(h * m) * mask
    return out[:, :n_frames]
