"""The head-pose VAE: per-frame head pose (7-d quaternion + translation, or the 4-d
Audio2Photoreal head) <-> an 8-d latent, with one transformer encoder layer on each side.

The AV model is trained on the encoder's mean and its head samples are decoded by this model
(../shared/spec/av_flow_reference.md §2).

Its attention is full (every frame sees the whole sequence), as the official model's, but it is
computed per block of query frames (`blocked_attention`), so decoding a sequence of T frames holds
O(T * block) scores at a time instead of the T x T matrix: sampling memory grows linearly with
length. The parameters are those of `nn.MultiHeadDotProductAttention` (the same module computes
the projections), so checkpoints trained before this change load unchanged.
"""

import functools
from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

DEFAULT_ATTENTION_BLOCK = 64  # Fewest query frames per attention block (long sequences).
# Scores one block may hold (4 MiB in float32): short sequences (training crops) take one block,
# as dense attention, because many small blocks cost time there (2-core CPU: a 256-frame crop's
# VAE step took twice as long in 64-frame blocks); long ones take `block` queries at a time, also
# the fastest there (decoding 20 minutes: 68 s in 64-frame blocks, 86 s in 256-frame ones).
BLOCK_SCORES = 1 << 20


def blocked_attention(query, key, value, mask=None, *, frame_mask=None,
                      window: Optional[tuple[int, int]] = None,
                      block: int = DEFAULT_ATTENTION_BLOCK, dtype=None, precision=None, **unused):
  """Self-attention computed one block of query frames at a time.

  Equals `nn.dot_product_attention` with the mask `nn.make_attention_mask(frame_mask,
  frame_mask)` (and the band `i - left <= j <= i + right` when `window` is given), including a
  query with no visible key (its scores are all the dtype's minimum, so it gets uniform weights,
  as in flax; callers never use those frames). A `lax.map` over blocks of bq queries computes a
  block's scores against all T keys (with a window, against the bq + left + right keys the block
  can see) and their exact softmax, so one block's scores exist at a time: memory O(T * bq)
  instead of O(T^2) (with a window O(bq * (bq + left + right))), FLOPs as dense attention's.

  Args:
    query, key, value: (B, T, H, D) projections, as `nn.MultiHeadDotProductAttention` passes.
    mask: must be None (the frame mask comes through `frame_mask`, never as a T x T array).
    frame_mask: optional (B, T) bool, True for valid frames.
    window: None for full attention, else (left, right) frames seen on each side.
    block: fewest query frames per block. Full attention takes max(block, BLOCK_SCORES // T)
      queries a block (so short sequences are one block), a window max(block, left + right).
    dtype: compute dtype of the weights (default: the query's).
    precision: matmul precision.
    **unused: the other arguments the attention module passes (dropout is not used: the head
      VAE's attention has no dropout).

  Returns:
    (B, T, H, D) attention output.
  """
  del unused
  if mask is not None:
    raise ValueError("blocked_attention takes the (B, T) frame_mask, not a T x T mask")
  dtype = dtype or query.dtype
  b, t, h, d = query.shape
  query = query / jnp.sqrt(d).astype(query.dtype)  # As nn.dot_product_attention_weights.
  if window is None:
    bq = max(int(block), BLOCK_SCORES // t)
  else:  # A block's scores are bq x (bq + left + right): keep bq near the band's width.
    bq = max(int(block), min(sum(int(w) for w in window), t))
  bq = max(1, min(bq, t))
  nb = -(-t // bq)
  tp = nb * bq
  qmask = jnp.ones((b, t), bool) if frame_mask is None else frame_mask.astype(bool)
  # Padded query rows are computed and thrown away; they never act as keys.
  q_blocks = jnp.pad(query, ((0, 0), (0, tp - t), (0, 0), (0, 0)))
  q_blocks = q_blocks.reshape(b, nb, bq, h, d).swapaxes(0, 1)  # (nb, B, bq, H, D)
  qm_blocks = jnp.pad(qmask, ((0, 0), (0, tp - t))).reshape(b, nb, bq).swapaxes(0, 1)
  big_neg = jnp.finfo(dtype).min

  if window is None:
    def attend(args):
      q, qm, _ = args
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, key, precision=precision)
      if frame_mask is not None:
        visible = qm[:, None, :, None] & qmask[:, None, None, :]
        scores = jnp.where(visible, scores, big_neg)
      weights = jax.nn.softmax(scores).astype(dtype)
      return jnp.einsum("bhqk,bkhd->bqhd", weights, value, precision=precision)
  else:
    # A band wider than the sequence is the whole sequence: clamp so the key slice stays <= T + bq.
    left, right = (min(max(int(w), 0), t - 1) for w in window)
    span = left + bq + right
    # Keys padded so block n's slice [n * bq - left, n * bq + bq + right) is always in range;
    # the padded keys are invalid frames (kmask_p False).
    pad_k = ((0, 0), (left, tp - t + right), (0, 0), (0, 0))
    key_p, value_p = jnp.pad(key, pad_k), jnp.pad(value, pad_k)
    kmask_p = jnp.pad(qmask, ((0, 0), (left, tp - t + right)))
    rel = jnp.arange(span)[None, :] - left - jnp.arange(bq)[:, None]  # key - query frame
    band = (rel >= -left) & (rel <= right)  # (bq, span)

    def attend(args):
      q, qm, n = args
      start = n * bq
      k = jax.lax.dynamic_slice_in_dim(key_p, start, span, axis=1)
      v = jax.lax.dynamic_slice_in_dim(value_p, start, span, axis=1)
      km = jax.lax.dynamic_slice_in_dim(kmask_p, start, span, axis=1)
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=precision)
      visible = band[None, None] & qm[:, None, :, None] & km[:, None, None, :]
      scores = jnp.where(visible, scores, big_neg)
      weights = jax.nn.softmax(scores).astype(dtype)
      return jnp.einsum("bhqk,bkhd->bqhd", weights, v, precision=precision)

  out = jax.lax.map(attend, (q_blocks, qm_blocks, jnp.arange(nb)))  # (nb, B, bq, H, D)
  return out.swapaxes(0, 1).reshape(b, tp, h, d)[:, :t]


class TransformerLayer(nn.Module):
  """A standard post-norm transformer encoder layer (ReLU feed-forward, no positions).

  Attributes:
    d_model: width.
    num_heads: attention heads.
    ff_dim: feed-forward width.
    dropout: dropout rate after attention and in the feed-forward.
    window: None (full attention, the official model) or (left, right) frames seen.
    attention_block: query frames per block of `blocked_attention` (memory, not results).
  """
  d_model: int = 16
  num_heads: int = 1
  ff_dim: int = 2048
  dropout: float = 0.1
  window: Optional[tuple[int, int]] = None
  attention_block: int = DEFAULT_ATTENTION_BLOCK

  @nn.compact
  def __call__(self, x, mask=None, train: bool = False):
    # The frame mask goes to the blocked attention as (B, T), never as a T x T mask; the module
    # (and so its query/key/value/out parameters) is flax's own.
    attn_fn = functools.partial(
        blocked_attention, frame_mask=mask,
        window=None if self.window is None else tuple(self.window), block=self.attention_block)
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, qkv_features=self.d_model,
                                        attention_fn=attn_fn, name="attn")(x, x)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    x = nn.LayerNorm(epsilon=1e-5, name="norm1")(x + y)
    y = nn.Dense(self.ff_dim, name="ff1")(x)
    y = nn.relu(y)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.Dense(self.d_model, name="ff2")(y)
    y = nn.Dropout(self.dropout, deterministic=not train)(y)
    return nn.LayerNorm(epsilon=1e-5, name="norm2")(x + y)


class HeadVAE(nn.Module):
  """Transformer VAE over head-pose sequences.

  Attributes:
    input_dim: 7 (quaternion + translation) or 4 (Audio2Photoreal neck/head angles).
    latent_dim: latent size per frame (8).
    hidden: transformer width (16).
    ff_dim: feed-forward width of the transformer layers (2048).
    num_heads: attention heads (1).
    dropout: dropout rate inside the transformer layers.
    window: None (full attention, as the official model) or (left, right) frames each frame
      attends to, in both layers (a decoder that can run on a stream).
    attention_block: query frames per attention block (changes memory, not results).
  """
  input_dim: int = 7
  latent_dim: int = 8
  hidden: int = 16
  ff_dim: int = 2048
  num_heads: int = 1
  dropout: float = 0.1
  window: Optional[tuple[int, int]] = None
  attention_block: int = DEFAULT_ATTENTION_BLOCK

  def setup(self):
    layer = functools.partial(TransformerLayer, self.hidden, self.num_heads, self.ff_dim,
                              self.dropout, self.window, self.attention_block)
    self.enc_in = nn.Dense(self.hidden)
    self.enc_layer = layer()
    self.fc_mu = nn.Dense(self.latent_dim)
    self.fc_var = nn.Dense(self.latent_dim)
    self.dec_in = nn.Dense(self.hidden)
    self.dec_layer = layer()
    self.dec_out = nn.Dense(self.input_dim)

  def encode(self, x, mask=None, train: bool = False):
    """(B, T, input_dim) normalised head pose -> (mu, log_var), each (B, T, latent_dim)."""
    h = self.enc_layer(self.enc_in(x), mask, train)
    return self.fc_mu(h), self.fc_var(h)

  def decode(self, z, mask=None, train: bool = False):
    """(B, T, latent_dim) -> (B, T, input_dim) normalised head pose."""
    return self.dec_out(self.dec_layer(self.dec_in(z), mask, train))

  def __call__(self, x, rng=None, mask=None, train: bool = False):
    mu, log_var = self.encode(x, mask, train)
    z = mu
    if rng is not None:
      z = mu + jnp.exp(0.5 * log_var) * jax.random.normal(rng, mu.shape)
    return self.decode(z, mask, train), mu, log_var


def vae_loss(recon, x, mu, log_var, frame_mask: Optional[jax.Array] = None,
             kld_weight: float = 1.0):
  """Mean |recon - x| + kld_weight * KL(q(z|x) || N(0, I)), averaged over valid frames.

  Returns:
    (total loss, dict of the two terms).
  """
  if frame_mask is None:
    frame_mask = jnp.ones(x.shape[:2], jnp.float32)
  n = jnp.maximum(frame_mask.sum(), 1.0)
  l1 = (jnp.abs(recon - x).mean(-1) * frame_mask).sum() / n
  kl = -0.5 * jnp.sum(1 + log_var - mu ** 2 - jnp.exp(log_var), axis=-1)
  kl = (kl * frame_mask).sum() / n
  return l1 + kld_weight * kl, {"recon_l1": l1, "kl": kl}


def default_config() -> ml_collections.ConfigDict:
  """The official head VAE's architecture (the `config.vae` of a head-VAE run)."""
  c = ml_collections.ConfigDict()
  c.latent_dim = 8  # Latent dims per frame (the AV model's head target).
  c.hidden = 16  # Transformer width.
  c.ff_dim = 2048  # Transformer feed-forward width.
  c.num_heads = 1  # Attention heads.
  c.dropout = 0.1  # Dropout inside the transformer layers.
  c.kld_weight = 1.0  # Weight of the KL term.
  # (left, right) frames each frame attends to, or None for full attention (the official model).
  # Parameters do not depend on it; a window lets the decoder run on a stream.
  c.window = ml_collections.config_dict.placeholder(tuple)
  return c


def parse_window(window) -> Optional[tuple[int, int]]:
  """`config.vae.window` as None or a (left, right) pair of ints >= 0.

  Raises:
    ValueError: naming `config.vae.window` and what is wrong with it.
  """
  if window is None:
    return None
  try:
    left, right = (int(w) for w in window)
    ok = [left, right] == list(window)
  except (TypeError, ValueError):
    ok = False
  if not ok or left < 0 or right < 0:
    raise ValueError(f"config.vae.window: {window!r}: use None (full attention) or a (left, "
                     "right) pair of integers >= 0")
  return (left, right)


def from_config(vae_cfg, input_dim: int) -> HeadVAE:
  """The HeadVAE of a head-VAE run config (its `vae` field) for `input_dim`-d poses."""
  v = vae_cfg.vae
  # Runs saved before the field existed have no window: full attention, as they were trained.
  return HeadVAE(input_dim=input_dim, latent_dim=v.latent_dim, hidden=v.hidden,
                 ff_dim=v.ff_dim, num_heads=v.num_heads, dropout=v.dropout,
                 window=parse_window(v.get("window")))
