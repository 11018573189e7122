"""The head-pose VAE (official: latent 8, hidden 16, one layer each side, 1 head).

The recipe (architecture in `config.vae`, batch 16, 20k steps, Adam lr 1e-3 / b2 0.999, no EMA)
is the library's `avflow_jax.training.head_vae_recipe.apply_recipe`, so the VAE an AV run trains
for itself and this config can never drift apart. Override any knob as usual, e.g.
`--config.vae.kld_weight=0.01 --config.num_steps=600`.
"""

from avflow_jax.training import head_vae_recipe
from configs import base


def get_config(arg=None):
  return head_vae_recipe.apply_recipe(base.get_config(arg))
