"""Text -> per-frame ASR tokens: Matcha-TTS with 29 output features (Flax Linen).

AV-Flow drives its audio-visual generator with wav2vec 2.0 CTC logits ("tokens", 29 per
frame on the 86.13 fps mel grid). At test time those come from text through this model, which
is Matcha-TTS with `n_feats = 29`. This module holds the text encoder, the full `TextToTokens`
module, its construction from a config and the token scale; the model is split over:

* here, the text encoder: 178x192 embedding (scaled by sqrt(192)) -> ConvReluNorm prenet -> 6
  post-norm transformer layers (2 heads, RoPE on half of each head's dims, conv FFN) -> `proj_m`
  gives mu per symbol; a duration predictor on the stop-gradient encoder output gives
  log-durations.
* `t2t_decoder`: the flow-matching decoder, a 1-D U-Net velocity estimator conditioned on mu.
* `t2t_loss`: training aligns symbols to frames with monotonic alignment search
  (`avflow_jax.mas`) under N(mu, I); losses are duration MSE in the log domain, the prior NLL
  and optimal-transport conditional flow matching (sigma_min 1e-4) of the estimator.
* `t2t_synthesis`: durations ceil(exp(logw)) * length_scale -> length regulation -> Euler ODE
  from temperature-scaled noise, all in one jitted function with static shapes.

Layout is channels-last everywhere: symbols (B, S, C), frames (B, T, C), masks (B, L, 1).
Tokens are normalised with the model's `token_mean` / `token_std` (config fields; default
constants.TOKEN_MEAN / TOKEN_STD, the official values; an imported official checkpoint brings
its `mean` / `std` buffers) inside `t2t_loss.loss_fn` and de-normalised by
`t2t_synthesis.synthesize`; callers see raw logits.

Deliberate differences from the PyTorch reference, for padding invariance under the fixed
(max_symbols, max_frames) shapes used here: decoder attention masks padded keys (the reference
adds the 0/1 mask as a bias, which masks nothing), GroupNorm statistics use valid frames only,
and the flow-matching target is masked on padded frames (a constant in the reference).

`official_padding=True` (a model field, default False) reproduces the reference decoder's
padding instead, deterministically (dropout stays off at inference, unlike the official
`get_tokens_from_text`): the 0/1 frame mask is added to the attention scores (valid keys +1,
padded keys +0, none masked), GroupNorm statistics cover every frame of the input, padded
ones included, and `synthesize` runs the decoder on `max_frames` rounded up to a multiple of 4
(`fix_len_compatibility`). Outputs then depend on the padded length: they match the reference
when that is ceil4 of the longest utterance, as the reference pads. It is an inference parity
mode: `loss_fn` keeps its masked target and the fixed `max_frames` batch shape.
"""

import dataclasses
import functools
import math
import numbers
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from avflow_jax.core import constants
from avflow_jax.models import t2t_decoder
from avflow_jax.models import torch_init

# PyTorch's default Conv/Linear init (kaiming_uniform with a = sqrt(5)) is U(+-1/sqrt(fan_in)).
_torch_default = torch_init.kernel_init
_LN_EPS = 1e-4  # the reference's channel LayerNorm.


def sequence_mask(lengths: jax.Array, max_len: int) -> jax.Array:
  """(B,) lengths -> (B, max_len, 1) float mask."""
  return (jnp.arange(max_len)[None, :] < lengths[:, None]).astype(jnp.float32)[..., None]


def apply_rope(x: jax.Array, n_rot: int, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding on the first `n_rot` dims of (B, T, H, D), rotate-half form."""
  t = x.shape[1]
  inv_freq = 1.0 / (base ** (jnp.arange(0, n_rot, 2, dtype=jnp.float32) / n_rot))
  angles = jnp.arange(t, dtype=jnp.float32)[:, None] * inv_freq[None, :]  # (T, n_rot / 2)
  angles = jnp.concatenate([angles, angles], axis=-1)[None, :, None, :]
  x_rot, x_pass = x[..., :n_rot], x[..., n_rot:]
  half = n_rot // 2
  rotated = jnp.concatenate([-x_rot[..., half:], x_rot[..., :half]], axis=-1)
  x_rot = x_rot * jnp.cos(angles) + rotated * jnp.sin(angles)
  return jnp.concatenate([x_rot, x_pass], axis=-1)


# ----------------------------------------------------------------------------- text encoder


class ConvReluNorm(nn.Module):
  """Prenet: n x [conv -> channel LayerNorm -> ReLU -> dropout], zero-init projection, residual."""
  channels: int
  kernel_size: int = 5
  n_layers: int = 3
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, mask, train):
    x_org = x
    for _ in range(self.n_layers):
      x = nn.Conv(self.channels, (self.kernel_size,), padding="SAME",
                  kernel_init=_torch_default)(x * mask)
      x = nn.LayerNorm(epsilon=_LN_EPS)(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
    # Zero-init projection: the prenet starts as the identity.
    x = x_org + nn.Dense(x_org.shape[-1], kernel_init=nn.initializers.zeros)(x)
    return x * mask


class RopeSelfAttention(nn.Module):
  """Multi-head self-attention with RoPE on half of each head's dims (1x1 convs = Dense)."""
  channels: int
  n_heads: int
  dropout: float

  @nn.compact
  def __call__(self, x, mask, train):
    b, t, _ = x.shape
    d = self.channels // self.n_heads
    split = lambda y: y.reshape(b, t, self.n_heads, d)
    dense = functools.partial(nn.Dense, self.channels, kernel_init=nn.initializers.xavier_uniform())
    q, k, v = (split(dense(name=n)(x)) for n in ("query", "key", "value"))
    q, k = apply_rope(q, d // 2), apply_rope(k, d // 2)
    out = t2t_decoder.attend(q, k, v, mask[..., 0],
                             nn.Dropout(self.dropout, deterministic=not train))
    return nn.Dense(self.channels, kernel_init=_torch_default, name="out")(out.reshape(b, t, -1))


class ConvFFN(nn.Module):
  """Conv k -> ReLU -> dropout -> conv k, masked."""
  channels: int
  filters: int
  kernel_size: int
  dropout: float

  @nn.compact
  def __call__(self, x, mask, train):
    x = nn.Conv(self.filters, (self.kernel_size,), padding="SAME",
                kernel_init=_torch_default)(x * mask)
    x = nn.Dropout(self.dropout, deterministic=not train)(nn.relu(x))
    x = nn.Conv(self.channels, (self.kernel_size,), padding="SAME",
                kernel_init=_torch_default)(x * mask)
    return x * mask


class Encoder(nn.Module):
  """Post-norm transformer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""
  channels: int
  filters: int
  n_heads: int
  n_layers: int
  kernel_size: int
  dropout: float

  @nn.compact
  def __call__(self, x, mask, train):
    drop = nn.Dropout(self.dropout, deterministic=not train)
    for i in range(self.n_layers):
      x = x * mask
      y = RopeSelfAttention(self.channels, self.n_heads, self.dropout, name=f"attn_{i}")(
          x, mask, train)
      x = nn.LayerNorm(epsilon=_LN_EPS, name=f"norm1_{i}")(x + drop(y))
      y = ConvFFN(self.channels, self.filters, self.kernel_size, self.dropout,
                  name=f"ffn_{i}")(x, mask, train)
      x = nn.LayerNorm(epsilon=_LN_EPS, name=f"norm2_{i}")(x + drop(y))
    return x * mask


class DurationPredictor(nn.Module):
  """2 x [conv -> ReLU -> LayerNorm -> dropout] -> 1x1 -> log-duration per symbol."""
  filters: int
  kernel_size: int
  dropout: float

  @nn.compact
  def __call__(self, x, mask, train):
    for _ in range(2):
      x = nn.Conv(self.filters, (self.kernel_size,), padding="SAME",
                  kernel_init=_torch_default)(x * mask)
      x = nn.LayerNorm(epsilon=_LN_EPS)(nn.relu(x))
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = nn.Dense(1, kernel_init=_torch_default)(x * mask)
    return (x * mask)[..., 0]


class TextEncoder(nn.Module):
  """ids -> (mu (B, S, n_feats), logw (B, S), mask (B, S, 1))."""
  n_vocab: int
  n_feats: int
  channels: int
  filters: int
  n_heads: int
  n_layers: int
  kernel_size: int
  dropout: float
  prenet_kernel: int
  prenet_layers: int
  prenet_dropout: float
  dp_filters: int
  dp_kernel: int
  dp_dropout: float

  @nn.compact
  def __call__(self, ids, ids_len, train):
    mask = sequence_mask(ids_len, ids.shape[1])
    emb = nn.Embed(self.n_vocab, self.channels,
                   embedding_init=nn.initializers.normal(self.channels ** -0.5))
    x = emb(ids) * math.sqrt(self.channels) * mask
    x = ConvReluNorm(self.channels, self.prenet_kernel, self.prenet_layers,
                     self.prenet_dropout, name="prenet")(x, mask, train)
    x = Encoder(self.channels, self.filters, self.n_heads, self.n_layers, self.kernel_size,
                self.dropout, name="encoder")(x, mask, train)
    mu = nn.Dense(self.n_feats, kernel_init=_torch_default, name="proj_m")(x) * mask
    # The duration predictor must not shape the encoder: it sees a stopped gradient.
    logw = DurationPredictor(self.dp_filters, self.dp_kernel, self.dp_dropout,
                             name="proj_w")(jax.lax.stop_gradient(x), mask, train)
    return mu, logw, mask


# ----------------------------------------------------------------------------- full model


class TextToTokens(nn.Module):
  """Matcha-TTS text encoder + duration predictor + flow-matching decoder."""
  n_vocab: int = 178
  n_feats: int = constants.TOKEN_DIM
  enc_channels: int = 192
  enc_filters: int = 768
  enc_heads: int = 2
  enc_layers: int = 6
  enc_kernel: int = 3
  enc_dropout: float = 0.1
  prenet_kernel: int = 5
  prenet_layers: int = 3
  prenet_dropout: float = 0.5
  dp_filters: int = 256
  dp_kernel: int = 3
  dp_dropout: float = 0.1
  dec_channels: tuple[int, ...] = (256, 256)
  dec_heads: int = 2
  dec_head_dim: int = 64
  dec_dropout: float = 0.05
  dec_blocks: int = 1
  dec_mid_blocks: int = 2
  sigma_min: float = 1e-4
  # Token statistics: the decoder works on (tokens - token_mean) / token_std.
  token_mean: float = constants.TOKEN_MEAN
  token_std: float = constants.TOKEN_STD
  # Reproduce the reference decoder's padding semantics (module docstring); default off.
  official_padding: bool = False

  def setup(self):
    self.text_encoder = TextEncoder(
        self.n_vocab, self.n_feats, self.enc_channels, self.enc_filters, self.enc_heads,
        self.enc_layers, self.enc_kernel, self.enc_dropout, self.prenet_kernel,
        self.prenet_layers, self.prenet_dropout, self.dp_filters, self.dp_kernel,
        self.dp_dropout)
    self.estimator = t2t_decoder.UNetEstimator(
        self.n_feats, tuple(self.dec_channels), self.dec_heads, self.dec_head_dim,
        self.dec_dropout, self.dec_blocks, self.dec_mid_blocks, self.official_padding)

  def encode(self, ids, ids_len, train=False):
    """Returns mu (B, S, F), logw (B, S), symbol mask (B, S, 1)."""
    return self.text_encoder(ids, ids_len, train)

  def velocity(self, x, mask, mu, t, train=False):
    """Flow velocity (B, T, F) at x_t for times t (B,), conditioned on frame-level mu."""
    return self.estimator(x, mask, mu, t, train)

  def __call__(self, ids, ids_len, x, mask, t, train=False):
    """Runs both halves (used to create all parameters)."""
    mu_x, logw, _ = self.encode(ids, ids_len, train)
    return self.velocity(x, mask, jnp.zeros_like(x), t, train), mu_x, logw


def make_model(config: Any) -> TextToTokens:
  """Builds the model from a config (the whole config with `.model`, or the model block).

  Args:
    config: ml_collections.ConfigDict / mapping; unknown keys in the model block are an error.

  Returns:
    An unbound `TextToTokens` module (hashable, usable as a jit static argument).
  """
  cfg = config["model"] if "model" in config else config
  cfg = dict(cfg)
  fields = {f.name for f in dataclasses.fields(TextToTokens)} - {"parent", "name"}
  unknown = set(cfg) - fields
  if unknown:
    raise ValueError(f"text_to_tokens config.model: unknown keys {sorted(unknown)}")
  if "dec_channels" in cfg:
    cfg["dec_channels"] = tuple(int(c) for c in cfg["dec_channels"])
  # Runs saved before the statistics were config fields lack them: the defaults apply.
  for key in ("token_mean", "token_std"):
    if key in cfg:
      v = cfg[key]
      if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
        raise ValueError(f"text_to_tokens config.model.{key}: {v!r} is not a finite number")
      cfg[key] = float(v)
  if not isinstance(cfg.get("official_padding", False), bool):
    raise ValueError("text_to_tokens config.model.official_padding: "
                     f"{cfg['official_padding']!r} is not a bool")
  if cfg.get("token_std", 1.0) <= 0:
    raise ValueError(f"text_to_tokens config.model.token_std: {cfg['token_std']} must be "
                     "positive")
  return TextToTokens(**cfg)


def init_params(model: TextToTokens, rng: jax.Array, max_symbols: int, max_frames: int):
  """Initialises parameters for inputs of shape (1, max_symbols) and (1, max_frames, F)."""
  ids = jnp.zeros((1, max_symbols), jnp.int32)
  ids_len = jnp.full((1,), max_symbols, jnp.int32)
  x = jnp.zeros((1, max_frames, model.n_feats), jnp.float32)
  mask = jnp.ones((1, max_frames, 1), jnp.float32)
  t = jnp.zeros((1,), jnp.float32)
  return jax.jit(lambda r: model.init({"params": r}, ids, ids_len, x, mask, t)["params"])(rng)


# ----------------------------------------------------------------------------- token scale


def normalise_tokens(tokens, mean: float = constants.TOKEN_MEAN,
                     std: float = constants.TOKEN_STD):
  """Raw token logits -> the decoder's scale (pass the model's token_mean / token_std)."""
  return (tokens - mean) / std


def denormalise_tokens(y, mean: float = constants.TOKEN_MEAN, std: float = constants.TOKEN_STD):
  """The decoder's scale -> raw token logits (inverse of `normalise_tokens`)."""
  return y * std + mean
