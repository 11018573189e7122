"""Text -> per-frame ASR tokens: Matcha-TTS with 29 output features (Flax Linen).

AV-Flow drives its audio-visual generator with wav2vec 2.0 CTC logits ("tokens", 29 per
frame on the 86.13 fps mel grid). At test time those come from text through this model, which
is Matcha-TTS with `n_feats = 29`:

* text encoder: 178x192 embedding (scaled by sqrt(192)) -> ConvReluNorm prenet -> 6 post-norm
  transformer layers (2 heads, RoPE on half of each head's dims, conv FFN) -> `proj_m` gives
  mu per symbol; a duration predictor on the stop-gradient encoder output gives log-durations.
* training aligns symbols to frames with monotonic alignment search (`avflow_jax.mas`) under
  N(mu, I); losses are duration MSE in the log domain, the prior NLL and optimal-transport
  conditional flow matching (sigma_min 1e-4) of a 1-D U-Net estimator conditioned on mu.
* synthesis: durations ceil(exp(logw)) * length_scale -> length regulation -> Euler ODE from
  temperature-scaled noise, all in one jitted function with static shapes.

Layout is channels-last everywhere: symbols (B, S, C), frames (B, T, C), masks (B, L, 1).
Tokens are normalised with the model's `token_mean` / `token_std` (config fields; default
constants.TOKEN_MEAN / TOKEN_STD, the official values; an imported official checkpoint brings
its `mean` / `std` buffers) inside `loss_fn` and de-normalised by `synthesize`; callers see raw
logits.

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
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from avflow_jax.core import constants
from avflow_jax.models import mas
from avflow_jax.models import torch_init

# PyTorch's default Conv/Linear init (kaiming_uniform with a = sqrt(5)) is U(+-1/sqrt(fan_in)).
_torch_default = torch_init.kernel_init
# Matcha's decoder re-initialises convs and linears with kaiming normal (ReLU gain).
_kaiming = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
_LN_EPS = 1e-4  # the reference's channel LayerNorm.
_LOG_2PI = math.log(2.0 * math.pi)


def sequence_mask(lengths: jax.Array, max_len: int) -> jax.Array:
  """(B,) lengths -> (B, max_len, 1) float mask."""
  return (jnp.arange(max_len)[None, :] < lengths[:, None]).astype(jnp.float32)[..., None]


def mish(x):
  return x * jnp.tanh(jax.nn.softplus(x))


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


def _attend(q, k, v, key_mask, probs_dropout=None, mask_as_bias=False):
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
    out = _attend(q, k, v, mask[..., 0], nn.Dropout(self.dropout, deterministic=not train))
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


# ------------------------------------------------------------------- flow-matching decoder


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
  official_padding: bool = False  # The mask is an additive score bias (see `_attend`).

  @nn.compact
  def __call__(self, x, mask, train):
    b, t, c = x.shape
    inner = self.n_heads * self.head_dim
    h = nn.LayerNorm(epsilon=1e-5, name="norm1")(x)
    split = lambda y: y.reshape(b, t, self.n_heads, self.head_dim)
    q, k, v = (split(nn.Dense(inner, use_bias=False, kernel_init=_kaiming, name=n)(h))
               for n in ("to_q", "to_k", "to_v"))
    att = _attend(q, k, v, mask[..., 0], mask_as_bias=self.official_padding)
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
    self.estimator = UNetEstimator(
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


# --------------------------------------------------------------------------- loss & synthesis


def normalise_tokens(tokens, mean: float = constants.TOKEN_MEAN,
                     std: float = constants.TOKEN_STD):
  """Raw token logits -> the decoder's scale (pass the model's token_mean / token_std)."""
  return (tokens - mean) / std


def denormalise_tokens(y, mean: float = constants.TOKEN_MEAN, std: float = constants.TOKEN_STD):
  """The decoder's scale -> raw token logits (inverse of `normalise_tokens`)."""
  return y * std + mean


def log_prior(y: jax.Array, mu: jax.Array) -> jax.Array:
  """(B, S, T) log N(y_t; mu_s, I) summed over features, for frames y (B, T, F), mu (B, S, F)."""
  n_feats = y.shape[-1]
  y_sq = -0.5 * jnp.sum(y ** 2, axis=-1)[:, None, :]
  mu_sq = -0.5 * jnp.sum(mu ** 2, axis=-1)[:, :, None]
  cross = jnp.einsum("bsf,btf->bst", mu, y, precision=jax.lax.Precision.HIGHEST)
  return y_sq + cross + mu_sq - 0.5 * _LOG_2PI * n_feats


def loss_fn(params, batch, rng, model: TextToTokens, train: bool = True):
  """Duration + prior + flow-matching loss on a padded batch.

  Args:
    params: model parameters.
    batch: {"ids" (B, S) int32, "ids_len" (B,), "tokens" (B, T, F) raw logits,
      "tokens_len" (B,)}; needs 1 <= ids_len <= tokens_len.
    rng: PRNG key (dropout, flow time, noise).
    model: the `TextToTokens` module.
    train: enables dropout.

  Returns:
    (loss, {"dur_loss", "prior_loss", "diff_loss", "loss"}), scalars.
  """
  ids, ids_len = batch["ids"], batch["ids_len"].astype(jnp.int32)
  tokens_len = batch["tokens_len"].astype(jnp.int32)
  y = normalise_tokens(batch["tokens"].astype(jnp.float32), model.token_mean, model.token_std)
  b, n_frames, n_feats = y.shape
  rng_enc, rng_dec, rng_t, rng_z = jax.random.split(rng, 4)
  variables = {"params": params}

  mu_x, logw, x_mask = model.apply(variables, ids, ids_len, train, method=TextToTokens.encode,
                                   rngs={"dropout": rng_enc})
  y_mask = sequence_mask(tokens_len, n_frames)
  y = y * y_mask

  # Hard alignment of frames to symbols under the current prior (no gradient).
  attn = mas.maximum_path(jax.lax.stop_gradient(log_prior(y, mu_x)), ids_len, tokens_len)
  attn = jax.lax.stop_gradient(attn)
  logw_target = jnp.log(1e-8 + jnp.sum(attn, axis=-1)) * x_mask[..., 0]
  dur_loss = jnp.sum((logw - logw_target) ** 2) / jnp.sum(ids_len)

  mu_y = jnp.einsum("bst,bsf->btf", attn, mu_x)  # symbol means repeated over their frames.
  n_valid = jnp.sum(y_mask) * n_feats
  prior_loss = jnp.sum(0.5 * ((y - mu_y) ** 2 + _LOG_2PI) * y_mask) / n_valid

  # OT conditional flow matching: straight path from noise z to data y.
  t = jax.random.uniform(rng_t, (b,), jnp.float32)
  z = jax.random.normal(rng_z, y.shape, jnp.float32)
  sigma = model.sigma_min
  tt = t[:, None, None]
  y_t = (1.0 - (1.0 - sigma) * tt) * z + tt * y
  target = y - (1.0 - sigma) * z
  v = model.apply(variables, y_t, y_mask, mu_y, t, train, method=TextToTokens.velocity,
                  rngs={"dropout": rng_dec})
  diff_loss = jnp.sum((v - target) ** 2 * y_mask) / n_valid

  loss = dur_loss + prior_loss + diff_loss
  return loss, {"loss": loss, "dur_loss": dur_loss, "prior_loss": prior_loss,
                "diff_loss": diff_loss}


def durations(logw, x_mask, length_scale):
  """Frames per symbol, ceil(exp(logw)) * length_scale (0 on padding), and their sums.

  Args:
    logw: (B, S) predicted log-durations; x_mask: (B, S, 1) symbol mask.
    length_scale: duration multiplier.

  Returns:
    (w_ceil (B, S), floor of their sum (B,)), floats.
  """
  w_ceil = jnp.ceil(jnp.exp(logw) * x_mask[..., 0]) * length_scale
  return w_ceil, jnp.floor(jnp.sum(w_ceil, axis=1))


def regulate_lengths(logw, x_mask, length_scale, max_frames: int):
  """Predicted durations -> (path (B, S, T), lengths (B,)) on a fixed frame grid.

  Durations are ceil(exp(logw)) * length_scale; the length is their sum (truncated to an
  integer, at least 1, at most `max_frames`).
  """
  w_ceil, total = durations(logw, x_mask, length_scale)
  lengths = jnp.clip(total, 1, max_frames).astype(jnp.int32)
  y_mask = sequence_mask(lengths, max_frames)
  path = mas.durations_to_path(w_ceil, max_frames) * y_mask[:, None, :, 0]
  return path, lengths


@functools.partial(jax.jit, static_argnames=("model",))
def predict_lengths(params, model: TextToTokens, ids, ids_len, length_scale=1.0):
  """(B,) int32 frames `synthesize` will produce (before its `max_frames` cap).

  The encoder and duration predictor only (a small fraction of synthesis), so callers can size
  the output buffer to the utterance instead of guessing.
  """
  _, logw, x_mask = model.apply({"params": params}, ids, ids_len.astype(jnp.int32), False,
                                method=TextToTokens.encode)
  return jnp.maximum(durations(logw, x_mask, length_scale)[1], 1).astype(jnp.int32)


def _decoder_grid(model: TextToTokens, mu_y, x, lengths):
  """The decoder's frames: (mu_y, x, y_mask) padded as `model.official_padding` asks.

  The reference pads the decoder length to a multiple of 4 (`fix_len_compatibility`). Padded
  frames of x never reach the estimator's output (its convs see x * mask), so their zero
  noise changes nothing; off, the grid stays at the given length.
  """
  n = x.shape[1]
  n_dec = -(-n // 4) * 4 if model.official_padding else n
  if n_dec > n:
    mu_y, x = (jnp.pad(a, ((0, 0), (0, n_dec - n), (0, 0))) for a in (mu_y, x))
  return mu_y, x, sequence_mask(lengths, n_dec)


@functools.partial(jax.jit, static_argnames=("model", "n_steps", "max_frames"))
def synthesize(params, model: TextToTokens, ids, ids_len, rng, n_steps: int = 10,
               temperature=0.667, length_scale=1.0, max_frames: int = 1024, x0=None):
  """Text ids -> token logits, one jitted function (encoder, durations, Euler ODE).

  Args:
    params: model parameters.
    model: the `TextToTokens` module (static).
    ids: (B, S) int32 symbol ids, padded with 0.
    ids_len: (B,) valid symbols.
    rng: PRNG key for the starting noise.
    n_steps: Euler steps on t in [0, 1] (static).
    temperature: scale of the starting noise.
    length_scale: >1 speaks slower.
    max_frames: static output length; longer utterances are truncated. With
      `model.official_padding` the decoder runs on max_frames rounded up to a multiple of 4
      (the reference's padded length when that is ceil4 of the longest utterance).
    x0: optional (B, max_frames, F) starting state of the ODE on the normalised scale, already
      temperature-scaled; replaces `normal(rng) * temperature` (rng and temperature are then
      unused). E.g. the official sampler's z (B, F, T) transposed and padded to max_frames.

  Returns:
    (tokens (B, max_frames, F) raw logits, zero past each length; lengths (B,) int32).
  """
  variables = {"params": params}
  ids_len = ids_len.astype(jnp.int32)
  mu_x, logw, x_mask = model.apply(variables, ids, ids_len, False, method=TextToTokens.encode)
  path, lengths = regulate_lengths(logw, x_mask, length_scale, max_frames)
  mu_y = jnp.einsum("bst,bsf->btf", path, mu_x)
  if x0 is None:
    x = jax.random.normal(rng, mu_y.shape, jnp.float32) * temperature
  else:
    if tuple(x0.shape) != mu_y.shape:
      raise ValueError(f"synthesize: x0 has shape {tuple(x0.shape)}, expected {mu_y.shape}")
    x = jnp.asarray(x0, jnp.float32)
  mu_y, x, y_mask = _decoder_grid(model, mu_y, x, lengths)
  dt = 1.0 / n_steps
  b = ids.shape[0]

  def euler_step(i, x):
    t = jnp.full((b,), i * dt, jnp.float32)
    v = model.apply(variables, x, y_mask, mu_y, t, False, method=TextToTokens.velocity)
    return x + dt * v

  x = jax.lax.fori_loop(0, n_steps, euler_step, x)[:, :max_frames]
  tokens = denormalise_tokens(x, model.token_mean, model.token_std)
  return tokens * y_mask[:, :max_frames], lengths
