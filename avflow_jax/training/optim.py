"""Optimiser and learning-rate schedule from the config (optax)."""

import jax
import jax.numpy as jnp
import optax


def make_schedule(config) -> optax.Schedule:
  """Linear warmup to config.optim.lr, then constant or cosine decay to zero at num_steps."""
  o = config.optim
  if o.schedule not in ("constant", "cosine"):
    raise ValueError(f"config.optim.schedule={o.schedule!r}: use 'constant' or 'cosine'")
  if o.schedule == "cosine":
    return optax.warmup_cosine_decay_schedule(
        0.0, o.lr, max(o.warmup_steps, 1), max(config.num_steps, o.warmup_steps + 1))
  if o.warmup_steps:
    return optax.join_schedules(
        [optax.linear_schedule(0.0, o.lr, o.warmup_steps), optax.constant_schedule(o.lr)],
        [o.warmup_steps])
  return optax.constant_schedule(o.lr)


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (official: lr 1e-4, betas 0.9/0.98, no weight decay), optional clipping."""
  o = config.optim
  schedule = make_schedule(config)
  parts = []
  if o.grad_clip and o.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(o.grad_clip))
  parts.append(optax.adamw(schedule, b1=o.b1, b2=o.b2, eps=o.get("eps", 1e-8),
                           weight_decay=o.weight_decay))
  return optax.chain(*parts), schedule


def ema_update(ema, params, step, decay: float):
  """EMA with a warm-up of the decay, (1 + step) / (10 + step), so early EMA is not stale."""
  if decay <= 0:
    return params
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
  return jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)
