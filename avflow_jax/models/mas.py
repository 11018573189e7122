"""Monotonic alignment search (Glow-TTS / Matcha-TTS) in JAX, and duration -> path.

An alignment maps every frame y of a clip to one symbol x so that the first frame takes the
first symbol, the last frame the last symbol, and from one frame to the next the symbol either
stays or advances by one. MAS picks the alignment with the largest summed log-likelihood:

  Q[x, y] = v[x, y] + max(Q[x, y-1], Q[x-1, y-1]),   Q[-1, -1] = 0,

then walks back from (last symbol, last frame), stepping to the previous symbol when it is
forced to (x == y) or when Q[x-1, y-1] > Q[x, y-1] (ties stay, as the reference does).
`maximum_path` runs both passes as `lax.scan`s over frames, so it jit-compiles with static
shapes and handles padded batches through lengths.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

# Stands in for -inf: keeps max/compare well defined without inf - inf = nan.
_NEG = -1e9


def maximum_path(logp: jax.Array, x_len: jax.Array, y_len: jax.Array) -> jax.Array:
  """Batched monotonic alignment search.

  Args:
    logp: (B, S, T) log-likelihood of frame t under symbol s.
    x_len: (B,) number of valid symbols (1 <= x_len <= S).
    y_len: (B,) number of valid frames (x_len <= y_len <= T).

  Returns:
    (B, S, T) float32 0/1 path; row sums are the durations, which sum to y_len. Cells past
    the lengths are 0. Not differentiable (apply `stop_gradient` upstream).
  """
  logp = logp.astype(jnp.float32)
  b, s, t = logp.shape
  x_len = x_len.astype(jnp.int32)
  y_len = y_len.astype(jnp.int32)
  sym = jnp.arange(s)
  valid_x = sym[None, :] < x_len[:, None]  # (B, S)
  v = jnp.where(valid_x[:, :, None], logp, _NEG)

  def forward(q_prev, inputs):
    v_y, y = inputs  # (B, S), scalar frame index
    # Predecessor from the previous symbol; before frame 0 only "symbol -1" has score 0.
    start = jnp.where(y == 0, 0.0, _NEG)
    q_shift = jnp.concatenate([jnp.full((b, 1), start), q_prev[:, :-1]], axis=1)
    q = v_y + jnp.maximum(q_prev, q_shift)
    q = jnp.where(sym[None, :] <= y, q, _NEG)  # symbol x needs at least x + 1 frames.
    return q, q

  q0 = jnp.full((b, s), _NEG, jnp.float32)
  _, q = jax.lax.scan(forward, q0, (jnp.moveaxis(v, 2, 0), jnp.arange(t)))  # (T, B, S)

  def backward(index, inputs):
    q_before, y = inputs  # Q[:, :, y - 1] (garbage at y == 0, unused there), frame index.
    active = y < y_len  # frames past the clip keep the start index and mark nothing.
    col = jax.nn.one_hot(index, s, dtype=jnp.float32) * active[:, None]
    stay = jnp.take_along_axis(q_before, index[:, None], axis=1)[:, 0]
    down = jnp.take_along_axis(q_before, jnp.maximum(index - 1, 0)[:, None], axis=1)[:, 0]
    move = active & (index != 0) & ((index == y) | (stay < down))
    return index - move.astype(jnp.int32), col

  q_before = jnp.concatenate([q[:1], q[:-1]], axis=0)  # row y holds Q[:, :, y - 1].
  _, cols = jax.lax.scan(backward, x_len - 1, (q_before, jnp.arange(t)), reverse=True)
  path = jnp.moveaxis(cols, 0, 2)  # (B, S, T)
  return path * (jnp.arange(t)[None, None, :] < y_len[:, None, None])


def durations_to_path(durations: jax.Array, n_frames: int) -> jax.Array:
  """Expands per-symbol durations into a hard alignment (length regulation).

  Frame y belongs to symbol x when cumsum[x-1] <= y < cumsum[x]; durations may be
  fractional (length_scale), as in Matcha-TTS's `generate_path`.

  Args:
    durations: (B, S) non-negative frames per symbol (0 for padding symbols).
    n_frames: static number of output frames T; frames past sum(durations) map to nothing.

  Returns:
    (B, S, T) float32 0/1 path.
  """
  cum = jnp.cumsum(durations, axis=1)  # (B, S)
  frames = jnp.arange(n_frames, dtype=cum.dtype)
  upto = (frames[None, None, :] < cum[:, :, None]).astype(jnp.float32)  # (B, S, T)
  before = jnp.pad(upto, ((0, 0), (1, 0), (0, 0)))[:, :-1]
  return upto - before


def mas_bruteforce(logp: np.ndarray) -> np.ndarray:
  """Exhaustive reference for one (S, T) case: tries every monotonic alignment.

  Args:
    logp: (S, T) log-likelihoods with S <= T (keep S, T small: C(T-1, S-1) alignments).

  Returns:
    (S, T) float32 0/1 path of the best alignment.
  """
  logp = np.asarray(logp, np.float64)
  s, t = logp.shape
  if s > t:
    raise ValueError(f"mas_bruteforce: {s} symbols cannot align to {t} frames")
  best, best_path = -np.inf, None
  # An alignment is fixed by the S-1 frames at which the symbol advances.
  for cuts in itertools.combinations(range(1, t), s - 1):
    bounds = (0,) + cuts + (t,)
    path = np.zeros((s, t), np.float32)
    for x in range(s):
      path[x, bounds[x]:bounds[x + 1]] = 1.0
    score = float((logp * path).sum())
    if score > best:
      best, best_path = score, path
  return best_path
