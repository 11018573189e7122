"""The head-pose VAE's training recipe, and the VAE run an AV run trains for itself.

`configs/head_vae.py` is `apply_recipe(base config)`; an AV run without
`config.head_vae.workdir` trains `for_av_run(config)` into WORKDIR/head_vae first.
"""

import jax

from avflow_jax.models import head_vae


def apply_recipe(c):
  """Turns a base ConfigDict into the official head-VAE run (in place); returns it."""
  c.task = "head_vae"
  c.vae = head_vae.default_config()
  c.batch_size = 16
  c.num_steps = 20_000
  c.optim.lr = 1e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.weight_decay = 0.0
  c.optim.warmup_steps = 0
  c.optim.schedule = "constant"
  c.optim.grad_clip = 0.0
  c.optim.ema_decay = 0.0  # The VAE is used as trained: no EMA copy.
  c.eval_every = 0
  c.ckpt_every = 1000
  return c


def for_av_run(config):
  """The head-VAE run config an AV run trains first: the recipe on this run's data and seed.

  `config.head_vae` sets its length (steps), feed-forward width, KL weight and window.
  """
  c = config.copy_and_resolve_references()
  with c.unlocked():  # The recipe adds `vae` to a (possibly locked) AV config.
    apply_recipe(c)
    c.head_vae.workdir = None
  c.num_steps = config.head_vae.steps
  c.vae.ff_dim = config.head_vae.get("ff_dim", c.vae.ff_dim)
  c.vae.kld_weight = config.head_vae.get("kld_weight", c.vae.kld_weight)
  c.vae.window = config.head_vae.get("window", c.vae.get("window"))
  c.ckpt_every = max(config.head_vae.steps, 1)
  c.log_every = max(config.head_vae.steps // 10, 1)
  c.mesh.data, c.mesh.fsdp = -1, 1
  c.batch_size = jax.device_count() * max(1, 16 // jax.device_count())
  return c
