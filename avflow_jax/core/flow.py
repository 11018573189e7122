"""Conditional flow matching with straight (optimal-transport) paths, as pure functions.

Convention (official AV-Flow): x0 ~ N(0, I) is noise, x1 is data, and
x_t = (1 - (1 - sigma_min) t) x0 + t x1, so the velocity along the path is
u = x1 - (1 - sigma_min) x0, constant in t.
"""

from typing import Mapping, Optional

import jax
import jax.numpy as jnp

SIGMA_MIN = 1e-6  # the official recipe's value.


TIME_SAMPLINGS = ("uniform", "logit_normal")


def sample_time(rng: jax.Array, batch_size: int, kind: str = "uniform", loc: float = 0.0,
                scale: float = 1.0) -> jax.Array:
  """Training times t in [0, 1), one per batch element.

  Args:
    rng: PRNG key.
    batch_size: how many.
    kind: "uniform": t ~ U(0, 1) (the official recipe); "logit_normal": t = sigmoid(loc +
      scale * N(0, 1)) (Esser et al. 2024), which spends more steps mid-path, where the
      velocity is hardest to predict, and fewer near the ends.
    loc, scale: the logit-normal's location and scale (unused by "uniform").

  Returns:
    (batch_size,) float32.
  """
  if kind == "uniform":
    return jax.random.uniform(rng, (batch_size,), jnp.float32)
  if kind == "logit_normal":
    return jax.nn.sigmoid(loc + scale * jax.random.normal(rng, (batch_size,), jnp.float32))
  raise ValueError(f"time sampling {kind!r}: use one of {TIME_SAMPLINGS}")


def interpolate(x0: jax.Array, x1: jax.Array, t: jax.Array,
                sigma_min: float = SIGMA_MIN) -> jax.Array:
  """Point x_t on the straight path from noise x0 (t = 0) to data x1 (t = 1)."""
  t = t.reshape(t.shape + (1,) * (x1.ndim - t.ndim))
  return (1.0 - (1.0 - sigma_min) * t) * x0 + t * x1


def velocity_target(x0: jax.Array, x1: jax.Array, sigma_min: float = SIGMA_MIN) -> jax.Array:
  """d x_t / dt, the regression target of the network."""
  return x1 - (1.0 - sigma_min) * x0


def masked_l1(pred: jax.Array, target: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
  """Mean absolute error over valid frames.

  Args:
    pred, target: (B, T, D).
    mask: optional (B, T) weights in {0, 1}; frames with 0 do not count.

  Returns:
    A scalar: sum over valid frames of mean_D |pred - target|, divided by the valid frame count.
  """
  err = jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32)).mean(-1)
  if mask is None:
    return err.mean()
  mask = mask.astype(jnp.float32)
  return (err * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def weighted_l1_losses(preds: Mapping[str, jax.Array], targets: Mapping[str, jax.Array],
                       masks: Mapping[str, Optional[jax.Array]],
                       weights: Mapping[str, float]):
  """Per-modality masked L1 and their weighted sum.

  Returns:
    (total, {name: unweighted loss}).
  """
  losses = {k: masked_l1(preds[k], targets[k], masks.get(k)) for k in preds}
  total = sum(weights[k] * losses[k] for k in losses)
  return total, losses


def euler_integrate(velocity_fn, x0: jax.Array, num_steps: int) -> jax.Array:
  """Integrates dx/dt = velocity_fn(x, t) from t = 0 to 1 with `num_steps` Euler steps.

  The loop is a `lax.fori_loop`, so under jit the whole solve is one compiled program.
  """
  dt = 1.0 / num_steps

  def body(i, x):
    t = i.astype(jnp.float32) * dt
    return x + dt * velocity_fn(x, t)

  return jax.lax.fori_loop(0, num_steps, body, x0)


def frame_noise(rng: jax.Array, start, count: int, dim: int) -> jax.Array:
  """(count, dim) N(0, I) noise of frames start .. start + count - 1 of one sequence.

  Frame i is drawn from `fold_in(rng, i)` alone, so the noise of a frame depends only on the
  key and its index: a stream that draws it chunk by chunk, a padded batch and a whole clip all
  see the same numbers.
  """
  frames = jnp.arange(count, dtype=jnp.uint32) + jnp.asarray(start, jnp.uint32)
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(rng, i), (dim,),
                                              jnp.float32))(frames)


def initial_noise(rng: jax.Array, batch: int, frames: int, dim: int) -> jax.Array:
  """(batch, frames, dim) sampler noise: element b is `frame_noise(fold_in(rng, b), 0, ...)`."""
  return jax.vmap(lambda b: frame_noise(jax.random.fold_in(rng, b), 0, frames, dim))(
      jnp.arange(batch, dtype=jnp.uint32))
