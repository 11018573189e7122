"""Windowed self-attention with rotary embeddings.

A frame i attends to frames j with i - left <= j <= i + right (the official AV-Flow band).
The official code builds the full T x T score matrix and masks it, so its cost is quadratic in T
although each frame sees only left + right + 1 others. Here a finite window is computed blockwise:
queries are cut into blocks of `block` frames and each block attends only to itself, the last
`left` frames of the block before and the first `right` frames of the block after. Memory and
FLOPs are O(T * (block + left + right)), never O(T^2).
"""

import functools
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np


def rotary_embedding(x: jax.Array, positions: jax.Array, base: float = 10_000.0) -> jax.Array:
  """Applies rotary position embeddings on interleaved pairs (x[2i], x[2i+1]).

  Args:
    x: (..., T, H, D) queries or keys, D even.
    positions: (T,) integer positions.
    base: rotary base.

  Returns:
    x rotated, same shape and dtype.
  """
  d = x.shape[-1]
  inv_freq = 1.0 / (base ** (np.arange(0, d, 2, dtype=np.float32) / d))  # (D/2,)
  angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]  # (T, D/2)
  cos = jnp.cos(angles)[:, None, :]  # (T, 1, D/2), broadcast over heads.
  sin = jnp.sin(angles)[:, None, :]
  xf = x.astype(jnp.float32).reshape(x.shape[:-1] + (d // 2, 2))
  x1, x2 = xf[..., 0], xf[..., 1]
  out = jnp.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
  return out.reshape(x.shape).astype(x.dtype)


def _softmax_attend(scores, mask, v, dtype):
  scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1)
  # A fully masked row (a padded query) gives uniform weights; zero it so it stays finite & inert.
  weights = jnp.where(mask.any(axis=-1, keepdims=True), weights, 0.0)
  return weights.astype(dtype), v


def dense_attention(q, k, v, *, window=None, lengths=None, query_offset=0):
  """Reference attention over the whole sequence with an optional band mask.

  Args:
    q: (B, Tq, H, D) queries of frames query_offset .. query_offset + Tq of the keys' frames.
    k, v: (B, T, H, D).
    window: None for unbounded, else (left, right); a negative side is unbounded.
    lengths: optional (B,) number of valid frames; keys at or beyond it are masked.
    query_offset: frame of the first query (may be traced); 0 when q covers every frame.

  Returns:
    (B, Tq, H, D) attention output.
  """
  b, tq, h, d = q.shape
  t = k.shape[1]
  scores = jnp.einsum("bqhd,bkhd->bhqk", q.astype(jnp.float32), k.astype(jnp.float32))
  scores = scores / np.sqrt(d)
  i = query_offset + jnp.arange(tq)[:, None]
  j = jnp.arange(t)[None, :]
  mask = jnp.ones((tq, t), bool)
  if window is not None:
    left, right = window
    if left >= 0:
      mask = mask & (j >= i - left)
    if right >= 0:
      mask = mask & (j <= i + right)
  mask = jnp.broadcast_to(mask, (b, 1, tq, t))
  if lengths is not None:
    mask = mask & (jnp.arange(t)[None, None, None, :] < lengths[:, None, None, None])
  weights, v = _softmax_attend(scores, mask, v, q.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def blocked_window_attention(q, k, v, *, window, lengths=None, block: int = 64):
  """Banded attention computed per query block; equals `dense_attention` with the band mask.

  Args:
    q, k, v: (B, T, H, D).
    window: (left, right) frames seen on each side.
    lengths: optional (B,) number of valid frames.
    block: query block size; raised to max(left, right) if smaller.

  Returns:
    (B, T, H, D) attention output.
  """
  left, right = window
  b, t, h, d = q.shape
  block = max(block, left, right, 1)
  nb = -(-t // block)
  pad = nb * block - t

  def blocks(x):  # (B, T, H, D) -> (B, nb, block, H, D), zero padded at the end.
    x = jnp.pad(x, ((0, 0), (0, pad), (0, 0), (0, 0)))
    return x.reshape(b, nb, block, h, d)

  qb, kb, vb = blocks(q), blocks(k), blocks(v)

  def neighbourhood(xb):  # keys of block n: [last `left` of n-1 | block n | first `right` of n+1]
    parts = []
    if left:
      prev = jnp.pad(xb, ((0, 0), (1, 0), (0, 0), (0, 0), (0, 0)))[:, :-1]
      parts.append(prev[:, :, block - left:])
    parts.append(xb)
    if right:
      nxt = jnp.pad(xb, ((0, 0), (0, 1), (0, 0), (0, 0), (0, 0)))[:, 1:]
      parts.append(nxt[:, :, :right])
    return jnp.concatenate(parts, axis=2)  # (B, nb, S, H, D), S = left + block + right

  kn, vn = neighbourhood(kb), neighbourhood(vb)
  scores = jnp.einsum("bnqhd,bnkhd->bnhqk", qb.astype(jnp.float32), kn.astype(jnp.float32))
  scores = scores / np.sqrt(d)

  # Absolute positions of queries and keys, to build the band and the validity mask.
  q_pos = (np.arange(nb)[:, None] * block + np.arange(block)[None, :])  # (nb, block)
  k_pos = (np.arange(nb)[:, None] * block - left
           + np.arange(left + block + right)[None, :])  # (nb, S)
  rel = k_pos[:, None, :] - q_pos[:, :, None]  # (nb, block, S)
  band = (rel >= -left) & (rel <= right) & (k_pos[:, None, :] >= 0)
  band = band & (k_pos[:, None, :] < t)
  mask = jnp.asarray(band)[None, :, None]  # (1, nb, 1, block, S)
  if lengths is not None:
    valid_k = jnp.asarray(k_pos)[None] < lengths[:, None, None]  # (B, nb, S)
    mask = mask & valid_k[:, :, None, None, :]
  mask = jnp.broadcast_to(mask, scores.shape)
  weights, _ = _softmax_attend(scores, mask, vn, q.dtype)
  out = jnp.einsum("bnhqk,bnkhd->bnqhd", weights, vn)
  return out.reshape(b, nb * block, h, d)[:, :t]


IMPLEMENTATIONS = ("blocked", "dense", "cudnn")


def shifted_causal_attention(q, k, v, *, window, lengths=None, implementation="xla"):
  """The (left, right) band as a causal sliding window, through `jax.nn.dot_product_attention`.

  cuDNN's fused attention supports causal sliding windows only. Shifting the keys and values
  `right` frames relative to the queries (here: `right` empty query rows in front, `right`
  empty key rows at the end, so the sequence is T + right long) turns the band
  [i - left, i + right] of query i into the causal window [p - left - right, p] of its new
  position p = i + right. Keys at or past `lengths` are cut by `key_value_seq_lengths`; a
  query whose whole band lies past the valid keys gets zeros, as in `blocked_window_attention`.

  Args:
    q, k, v: (B, T, H, D), rotary embeddings already applied.
    window: (left, right), both >= 0.
    lengths: optional (B,) number of valid frames.
    implementation: "cudnn" (GPU, bf16/fp16), "xla" (any device), or None (JAX picks).

  Returns:
    (B, T, H, D) attention output.
  """
  left, right = window
  b, t = q.shape[:2]
  valid = jnp.full((b,), t, jnp.int32) if lengths is None else lengths.astype(jnp.int32)
  if right:
    q = jnp.pad(q, ((0, 0), (right, 0), (0, 0), (0, 0)))
    k = jnp.pad(k, ((0, 0), (0, right), (0, 0), (0, 0)))
    v = jnp.pad(v, ((0, 0), (0, right), (0, 0), (0, 0)))
  out = jax.nn.dot_product_attention(
      q, k, v, is_causal=True, local_window_size=(left + right, 0),
      key_value_seq_lengths=valid, implementation=implementation)[:, right:]
  has_key = (jnp.arange(t)[None, :] - left) < valid[:, None]  # The band meets a valid key.
  return jnp.where(has_key[:, :, None, None], out, 0).astype(q.dtype)


def windowed_attention(q, k, v, *, window: Optional[tuple[int, int]], lengths=None,
                       block: int = 64, implementation: str = "blocked"):
  """The (left, right) band attention by one of `IMPLEMENTATIONS` (all equal to 1e-5).

  A negative side is unbounded on that side only (as `layer_windows` documents and the official
  model's None does): (-1, 0) is causal attention. "blocked" is linear in T (query blocks of
  `block` frames); "dense" builds the T x T scores (as the official model does); "cudnn" runs
  `shifted_causal_attention` with the cuDNN kernel on a GPU and XLA's elsewhere. Unbounded
  windows always take the dense path.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"config.model.attention={implementation!r}: must be 'auto' or one of "
                     f"{IMPLEMENTATIONS}")
  if window is None or window[0] < 0 or window[1] < 0 or implementation == "dense":
    return dense_attention(q, k, v, window=window, lengths=lengths)
  if implementation == "cudnn":
    impl = "cudnn" if jax.default_backend() == "gpu" else "xla"
    return shifted_causal_attention(q, k, v, window=tuple(window), lengths=lengths,
                                    implementation=impl)
  return blocked_window_attention(q, k, v, window=tuple(window), lengths=lengths, block=block)


def resolve_implementation(name: str, dtype, head_dim: int, backend: Optional[str] = None) -> str:
  """`config.model.attention` as one of `IMPLEMENTATIONS` for this device.

  "auto" takes cuDNN's fused kernel on a GPU where it applies (bf16/fp16 compute, head dim a
  multiple of 8 up to 128) and compiles there (`cudnn_compiles`), and the blocked attention
  elsewhere (CPU, TPU, float32 on GPU, or a GPU whose cuDNN lacks the kernel).
  """
  if name != "auto":
    return name
  backend = backend or jax.default_backend()
  fused = jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) and head_dim % 8 == 0 and head_dim <= 128
  if backend == "gpu" and fused and cudnn_compiles(jnp.dtype(dtype).name, head_dim):
    return "cudnn"
  return "blocked"


@functools.lru_cache(maxsize=None)
def cudnn_compiles(dtype: str, head_dim: int) -> bool:
  """Whether the shifted causal window compiles with cuDNN here (once per dtype and head dim).

  The kernel's support depends on the GPU, the cuDNN version and jaxlib; an "auto" default that
  failed to compile would stop every GPU run, so it is probed on a tiny input first.
  """
  x = jax.ShapeDtypeStruct((1, 64, 1, head_dim), jnp.dtype(dtype))
  fn = jax.jit(lambda q, k, v: shifted_causal_attention(
      q, k, v, window=(16, 8), lengths=jnp.array([60]), implementation="cudnn"))
  try:
    fn.lower(x, x, x).compile()
    return True
  except Exception as e:  # pylint: disable=broad-except  (XLA/cuDNN raise many types)
    logging.warning("model.attention=auto: cuDNN attention does not compile here (%s); using "
                    "the blocked attention", str(e).splitlines()[0][:200] if str(e) else e)
    return False
