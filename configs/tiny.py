"""A small AV model for tests and CPU smoke runs (same architecture, tiny sizes)."""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg)
  c.model.num_layers = 2  # Two block pairs (so the fusion between blocks is exercised).
  c.model.d_model = 32  # Tower width.
  c.model.hidden_dim = 64  # Feed-forward width.
  c.model.num_heads = 2  # Head dim 16.
  c.model.windows = (4, 2)  # A small band so edges and blocks are exercised at short lengths.
  c.model.attention_block = 8  # Small query blocks.
  c.data.crop_frames = 48  # Short segments.
  c.data.demo_minutes = 2.0  # A short demo corpus when data.dir is unset.
  c.head_vae.steps = 50  # A short automatic VAE training.
  c.batch_size = 8  # One example per fake device.
  c.num_steps = 20
  c.optim.lr = 1e-3
  c.optim.ema_decay = 0.0
  c.log_every = 5
  c.eval_every = 0
  c.ckpt_every = 10
  c.keep_checkpoints = 2
  return c
