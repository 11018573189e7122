"""The head-pose VAE (official: latent 8, hidden 16, one layer each side, 1 head)."""

import ml_collections

from configs import base


def get_config(arg=None):
  c = base.get_config(arg)
  c.task = "head_vae"
  c.vae = ml_collections.ConfigDict()
  c.vae.latent_dim = 8  # Latent dims per frame (the AV model's head target).
  c.vae.hidden = 16  # Transformer width.
  c.vae.ff_dim = 2048  # Transformer feed-forward width.
  c.vae.num_heads = 1  # Attention heads.
  c.vae.dropout = 0.1  # Dropout inside the transformer layers.
  c.vae.kld_weight = 1.0  # Weight of the KL term.
  c.batch_size = 16
  c.num_steps = 20_000
  c.optim.lr = 1e-3
  c.optim.b2 = 0.999
  c.optim.ema_decay = 0.0
  c.eval_every = 0
  c.ckpt_every = 1000
  return c
