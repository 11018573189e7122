"""Text-to-tokens inference: predicted durations -> length regulation -> Euler ODE.

Durations are ceil(exp(logw)) * length_scale per symbol; length regulation repeats each
symbol's mu over its frames on a fixed `max_frames` grid (`avflow_jax.models.mas`
.durations_to_path); the decoder then integrates the flow from temperature-scaled noise with
Euler steps and the result is de-normalised to raw token logits. `synthesize` is one jitted
function with static shapes; `predict_lengths` runs the encoder alone to size its buffer.
With `model.official_padding` the decoder grid is rounded up to a multiple of 4, as the
reference pads (see the `text_to_tokens` module docstring).
"""

import functools

import jax
import jax.numpy as jnp

from avflow_jax.models import mas
from avflow_jax.models import text_to_tokens


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
  y_mask = text_to_tokens.sequence_mask(lengths, max_frames)
  path = mas.durations_to_path(w_ceil, max_frames) * y_mask[:, None, :, 0]
  return path, lengths


@functools.partial(jax.jit, static_argnames=("model",))
def predict_lengths(params, model: text_to_tokens.TextToTokens, ids, ids_len, length_scale=1.0):
  """(B,) int32 frames `synthesize` will produce (before its `max_frames` cap).

  The encoder and duration predictor only (a small fraction of synthesis), so callers can size
  the output buffer to the utterance instead of guessing.
  """
  _, logw, x_mask = model.apply({"params": params}, ids, ids_len.astype(jnp.int32), False,
                                method=text_to_tokens.TextToTokens.encode)
  return jnp.maximum(durations(logw, x_mask, length_scale)[1], 1).astype(jnp.int32)


def _decoder_grid(model: text_to_tokens.TextToTokens, mu_y, x, lengths):
  """The decoder's frames: (mu_y, x, y_mask) padded as `model.official_padding` asks.

  The reference pads the decoder length to a multiple of 4 (`fix_len_compatibility`). Padded
  frames of x never reach the estimator's output (its convs see x * mask), so their zero
  noise changes nothing; off, the grid stays at the given length.
  """
  n = x.shape[1]
  n_dec = -(-n // 4) * 4 if model.official_padding else n
  if n_dec > n:
    mu_y, x = (jnp.pad(a, ((0, 0), (0, n_dec - n), (0, 0))) for a in (mu_y, x))
  return mu_y, x, text_to_tokens.sequence_mask(lengths, n_dec)


@functools.partial(jax.jit, static_argnames=("model", "n_steps", "max_frames"))
def synthesize(params, model: text_to_tokens.TextToTokens, ids, ids_len, rng, n_steps: int = 10,
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
  mu_x, logw, x_mask = model.apply(variables, ids, ids_len, False,
                                   method=text_to_tokens.TextToTokens.encode)
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
    v = model.apply(variables, x, y_mask, mu_y, t, False,
                    method=text_to_tokens.TextToTokens.velocity)
    return x + dt * v

  x = jax.lax.fori_loop(0, n_steps, euler_step, x)[:, :max_frames]
  tokens = text_to_tokens.denormalise_tokens(x, model.token_mean, model.token_std)
  return tokens * y_mask[:, :max_frames], lengths
