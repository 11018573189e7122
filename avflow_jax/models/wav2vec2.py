"""wav2vec 2.0 CTC acoustic model (facebook/wav2vec2-base-960h architecture) in Flax Linen.

Inference-only port used to turn speech into per-frame character logits (the AV-Flow "ASR
tokens") and to score generated speech (WER). Architecture (post-LN variant, group-norm feature
encoder):

  audio (B, N) -> 7 strided convs (conv0 + per-channel GroupNorm, GELU) -> (B, T, 512)
  -> LayerNorm + Linear -> (B, T, 768) -> + GELU(weight-normed grouped pos-conv)
  -> LayerNorm -> 12 x post-LN transformer layers -> Linear -> (B, T, 32) logits.

T = floor((N - 400) / 320) + 1 for the base config (receptive field 400, hop 320).

This module holds the config, the network and its forward pass; weights load from a Hugging
Face `model.safetensors` through `wav2vec2_checkpoint` (no torch needed), which folds the
positional convolution's weight norm into a plain kernel, since we never train.

Padded batches: `lengths` (valid samples per row) makes every valid frame equal to running the
unpadded row on its own: conv0's GroupNorm statistics only use valid frames, padded frames are
zeroed before the positional convolution and masked out as attention keys.
"""

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Params = Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Wav2Vec2Config:
  """Architecture hyper-parameters; defaults are facebook/wav2vec2-base-960h.

  Frozen (hashable) so it can be a static argument of `jax.jit`.
  """
  conv_dim: Sequence[int] = (512,) * 7
  conv_kernel: Sequence[int] = (10, 3, 3, 3, 3, 2, 2)
  conv_stride: Sequence[int] = (5, 2, 2, 2, 2, 2, 2)
  conv_bias: bool = False
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  num_conv_pos_embeddings: int = 128
  num_conv_pos_embedding_groups: int = 16
  layer_norm_eps: float = 1e-5
  group_norm_eps: float = 1e-5  # torch.nn.GroupNorm default; not part of the HF config.
  vocab_size: int = 32
  # Runtime knob, not architecture: attention is computed over blocks of this many query
  # frames to bound memory on long inputs (exact).
  query_block: int = 128

  def __post_init__(self):
    # Tuples keep the dataclass hashable even if lists were passed in.
    for name in ("conv_dim", "conv_kernel", "conv_stride"):
      object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
    n = len(self.conv_dim)
    if not n or len(self.conv_kernel) != n or len(self.conv_stride) != n:
      raise ValueError(
          "Wav2Vec2Config: conv_dim, conv_kernel and conv_stride must be non-empty and of equal "
          f"length, got {self.conv_dim}, {self.conv_kernel}, {self.conv_stride}.")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(f"Wav2Vec2Config: hidden_size {self.hidden_size} is not divisible by "
                       f"num_attention_heads {self.num_attention_heads}.")
    if self.hidden_size % self.num_conv_pos_embedding_groups:
      raise ValueError(f"Wav2Vec2Config: hidden_size {self.hidden_size} is not divisible by "
                       f"num_conv_pos_embedding_groups {self.num_conv_pos_embedding_groups}.")

  @property
  def receptive_field(self) -> int:
    """Input samples seen by one output frame (400 for base)."""
    field, jump = 1, 1
    for k, s in zip(self.conv_kernel, self.conv_stride):
      field += (k - 1) * jump
      jump *= s
    return field

  @property
  def hop(self) -> int:
    """Input samples between consecutive output frames (320 for base)."""
    return int(np.prod(self.conv_stride))


def output_lengths(config: Wav2Vec2Config, num_samples):
  """Number of output frames for `num_samples` input samples (int, numpy or jax int array).

  floor((N - 400) / 320) + 1 for base, applied layer by layer exactly like the convs; 0 when the
  input is shorter than the receptive field.
  """
  maximum = jnp.maximum if isinstance(num_samples, jax.Array) else np.maximum
  n = num_samples
  for k, s in zip(config.conv_kernel, config.conv_stride):
    n = maximum((n - k) // s + 1, 0)
  return int(n) if isinstance(num_samples, (int, np.integer)) else n


def _gelu(x):
  return jax.nn.gelu(x, approximate=False)  # HF "gelu" is the exact erf form.


def _channel_norm(y, lengths, eps):
  """Per-channel normalisation over time of y (B, T, C) using only the first `lengths` frames.

  Two-pass statistics on the conv output itself, like torch's GroupNorm. (Folding closed-form
  statistics w' cov(patches) w into the kernel saves a pass (~1% of the forward) but loses
  precision through cancellation for high-pass channels on correlated speech samples: ~1e-5
  relative variance error vs ~1e-8 for a low-passed-noise test signal.)
  """
  if lengths is None:
    mean = jnp.mean(y, axis=1, keepdims=True)
    var = jnp.mean(jnp.square(y - mean), axis=1, keepdims=True)
  else:
    # `where`, not a float-mask product: XLA CPU fuses it into the reductions (6x faster).
    mask = (jnp.arange(y.shape[1])[None, :] < lengths[:, None])[..., None]
    count = jnp.maximum(lengths, 1).astype(y.dtype)[:, None, None]
    mean = jnp.sum(jnp.where(mask, y, 0.0), axis=1, keepdims=True) / count
    var = jnp.sum(jnp.where(mask, jnp.square(y - mean), 0.0), axis=1, keepdims=True) / count
  return (y - mean) * jax.lax.rsqrt(var + eps)


class _GroupNormConv0(nn.Module):
  """conv0 (1 -> C channels) + GroupNorm(C groups, i.e. per channel over time) + GELU.

  The single-channel conv is a (T0, k) x (k, C) matmul over patches gathered with k strided
  slices (cheaper on CPU than a 1-input-channel convolution). Statistics only use the first
  `lengths[b]` frames, so padding does not change them. A conv bias would be removed by the
  norm's mean subtraction, so it is accepted and ignored.
  """
  config: Wav2Vec2Config

  @nn.compact
  def __call__(self, audio, lengths=None):
    cfg = self.config
    c, k, s = cfg.conv_dim[0], cfg.conv_kernel[0], cfg.conv_stride[0]
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, 1, c))
    scale = self.param("norm_scale", nn.initializers.ones, (c,))
    bias = self.param("norm_bias", nn.initializers.zeros, (c,))
    if cfg.conv_bias:
      self.param("bias", nn.initializers.zeros, (c,))  # Cancelled by the norm (see above).
    t_out = (audio.shape[1] - k) // s + 1
    patches = jnp.stack(
        [audio[:, j:j + s * (t_out - 1) + 1:s] for j in range(k)], axis=-1)
    y = patches @ kernel[:, 0, :]
    return _gelu(_channel_norm(y, lengths, cfg.group_norm_eps) * scale + bias)


class _Conv1d(nn.Module):
  """Valid strided 1-D conv; kernel (k, C_in, C_out) like `nn.Conv`."""
  features: int
  kernel_size: int
  stride: int
  use_bias: bool

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel_size, x.shape[-1], self.features))
    # XLA's strided convolution beats explicit patch matmuls on CPU here (measured).
    y = jax.lax.conv_general_dilated(x, kernel, (self.stride,), "VALID",
                                     dimension_numbers=("NWC", "WIO", "NWC"))
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,))
    return y


class FeatureEncoder(nn.Module):
  """Raw audio (B, N) -> conv features (B, T, conv_dim[-1]) and valid frame counts."""
  config: Wav2Vec2Config

  @nn.compact
  def __call__(self, audio, lengths=None):
    cfg = self.config
    layers = list(zip(cfg.conv_dim, cfg.conv_kernel, cfg.conv_stride))
    if lengths is not None:
      lengths = jnp.maximum((lengths - layers[0][1]) // layers[0][2] + 1, 0)
    x = _GroupNormConv0(cfg, name="conv_layers_0")(audio, lengths)
    for i, (c, k, s) in enumerate(layers[1:], start=1):
      x = _gelu(_Conv1d(c, k, s, cfg.conv_bias, name=f"conv_layers_{i}")(x))
      if lengths is not None:
        lengths = jnp.maximum((lengths - k) // s + 1, 0)
    return x, lengths


class PositionalConvEmbedding(nn.Module):
  """Grouped conv (kernel K, 'same' padding K//2, last frame dropped for even K) + GELU."""
  config: Wav2Vec2Config

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    h, k, g = cfg.hidden_size, cfg.num_conv_pos_embeddings, cfg.num_conv_pos_embedding_groups
    # The weight-normed torch kernel, already fused (g * v / |v|) by the loader.
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, h // g, h))
    bias = self.param("bias", nn.initializers.zeros, (h,))
    y = jax.lax.conv_general_dilated(x, kernel, (1,), [(k // 2, k // 2)],
                                     dimension_numbers=("NWC", "WIO", "NWC"),
                                     feature_group_count=g)
    y = y[:, :x.shape[1]] + bias  # SamePad: drop the extra frame of an even kernel.
    return _gelu(y)


def _attend(q, k, v, key_mask):
  """softmax(q k^T) v for q (B, H, Tq, D), k/v (B, H, Tk, D); normalises after the PV matmul
  (one pass fewer over the (Tq, Tk) matrix)."""
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(logits.dtype).min)
  e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  return (e @ v) / jnp.sum(e, axis=-1, keepdims=True)


def _blocked_attention(q, k, v, key_mask, block: int):
  """Exact attention over query blocks so the score matrix stays (B, H, block, Tk).

  Bounds memory for long chunks (100 s = 5000 frames would otherwise hold 12 x 5000^2 floats
  = 1.2 GB per layer) and keeps the working set closer to cache.
  """
  t = q.shape[2]
  if t <= block:
    return _attend(q, k, v, key_mask)
  n = -(-t // block)
  qp = jnp.pad(q, ((0, 0), (0, 0), (0, n * block - t), (0, 0)))
  qb = jnp.moveaxis(qp.reshape(q.shape[:2] + (n, block, q.shape[3])), 2, 0)
  out = jax.lax.map(lambda qi: _attend(qi, k, v, key_mask), qb)
  out = jnp.moveaxis(out, 0, 2).reshape(qp.shape)
  return out[:, :, :t]


class SelfAttention(nn.Module):
  config: Wav2Vec2Config

  @nn.compact
  def __call__(self, x, key_mask=None):
    cfg = self.config
    b, t, h = x.shape
    nh = cfg.num_attention_heads
    hd = h // nh
    # (B, heads, T, head_dim): batched matmuls with contiguous operands (2x faster on CPU
    # than contracting in the (B, T, heads, head_dim) layout).
    split = lambda y: y.reshape(b, t, nh, hd).transpose(0, 2, 1, 3)
    q = split(nn.Dense(h, name="q_proj")(x) * (hd ** -0.5))
    k = split(nn.Dense(h, name="k_proj")(x))
    v = split(nn.Dense(h, name="v_proj")(x))
    out = _blocked_attention(q, k, v, key_mask, cfg.query_block)
    out = out.transpose(0, 2, 1, 3).reshape(b, t, h)
    return nn.Dense(h, name="out_proj")(out)


class EncoderLayer(nn.Module):
  """Post-LN transformer layer (wav2vec2 base, `do_stable_layer_norm=False`)."""
  config: Wav2Vec2Config

  @nn.compact
  def __call__(self, x, key_mask=None):
    cfg = self.config
    x = x + SelfAttention(cfg, name="attention")(x, key_mask)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, name="layer_norm")(x)
    y = nn.Dense(cfg.intermediate_size, name="intermediate_dense")(x)
    y = nn.Dense(cfg.hidden_size, name="output_dense")(_gelu(y))
    x = x + y
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False,
                        name="final_layer_norm")(x)


class Wav2Vec2ForCTC(nn.Module):
  """audio (B, N) float32 [+ lengths (B,)] -> CTC logits (B, T, vocab_size)."""
  config: Wav2Vec2Config

  @nn.compact
  def __call__(self, audio, lengths=None):
    cfg = self.config
    x, frames = FeatureEncoder(cfg, name="feature_extractor")(audio, lengths)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False,
                     name="feature_projection_layer_norm")(x)
    x = nn.Dense(cfg.hidden_size, name="feature_projection")(x)
    key_mask = None
    if frames is not None:
      key_mask = jnp.arange(x.shape[1])[None, :] < frames[:, None]
      # Padded frames must look like the pos-conv's zero padding.
      x = jnp.where(key_mask[..., None], x, 0.0)
    x = x + PositionalConvEmbedding(cfg, name="pos_conv_embed")(x)
    x = nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False,
                     name="encoder_layer_norm")(x)
    for i in range(cfg.num_hidden_layers):
      x = EncoderLayer(cfg, name=f"layers_{i}")(x, key_mask)
    return nn.Dense(cfg.vocab_size, name="lm_head")(x)


def wav2vec2_logits(config: Wav2Vec2Config, params: Params, audio_16k: jax.Array,
                    lengths: Optional[jax.Array] = None) -> jax.Array:
  """CTC logits of 16 kHz audio.

  Pure and jit-friendly: `jax.jit(wav2vec2_logits, static_argnums=0)`.

  Args:
    config: architecture.
    params: the Flax parameter tree (from `wav2vec2_checkpoint.load_wav2vec2` or
      `init_params`).
    audio_16k: (B, N) float32 waveform, already normalised as the model expects.
    lengths: optional (B,) int valid samples per row; frames of a padded row then equal those of
      the unpadded row (frames past the valid count are garbage).

  Returns:
    (B, T, vocab_size) float32 logits, T = `output_lengths(config, N)`.
  """
  audio_16k = jnp.asarray(audio_16k, jnp.float32)
  if audio_16k.ndim != 2:
    raise ValueError(f"wav2vec2_logits: audio must be (B, N), got shape {audio_16k.shape}.")
  if audio_16k.shape[1] < config.receptive_field:
    raise ValueError(f"wav2vec2_logits: need at least {config.receptive_field} samples, got "
                     f"{audio_16k.shape[1]}.")
  return Wav2Vec2ForCTC(config).apply({"params": params}, audio_16k, lengths)


def init_params(config: Wav2Vec2Config, seed: int = 0) -> Params:
  """Random parameters (for tests and benchmarks)."""
  dummy = jnp.zeros((1, config.receptive_field + 4 * config.hop), jnp.float32)
  init = jax.jit(lambda key: Wav2Vec2ForCTC(config).init(key, dummy)["params"])
  return init(jax.random.PRNGKey(seed))
