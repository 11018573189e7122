"""A model sized to learn the demo avatar on a 2-core CPU in about 20 minutes."""

from configs import base


def get_config(arg=None):
  c = base.get_config(arg)
  c.model.num_layers = 4  # Block pairs.
  c.model.d_model = 128  # Tower width.
  c.model.hidden_dim = 256  # Feed-forward width.
  c.model.num_heads = 4  # Head dim 32.
  # The demo actor smiles 0.4-0.9 s after the participant and holds it up to ~1.7 s after they
  # stop: 4 layers x 48 left frames see 2.2 s back (with 16, 0.74 s: F1_smiles 0.41 vs 0.70).
  c.model.windows = (48, 8)
  c.data.crop_frames = 256  # ~3 s segments.
  c.data.participant = True  # The demo actor smiles back at the participant: needs their features.
  c.head_vae.steps = 600  # The automatic head-VAE training.
  c.head_vae.ff_dim = 256  # A narrower VAE feed-forward: 2048 is memory-bound on a CPU.
  # In 600 steps a KL weight of 1 collapses the posterior (the decoded head barely moves);
  # 0.01 measured: reconstruction L1 0.23 vs 0.63 (normalised units) on the demo corpus.
  c.head_vae.kld_weight = 0.01
  c.batch_size = 8
  c.num_steps = 3000
  c.optim.lr = 5e-4
  c.optim.warmup_steps = 200
  c.optim.schedule = "cosine"
  c.optim.grad_clip = 1.0
  c.optim.ema_decay = 0.999
  # Noise at half scale: a small model leaves part of the initial noise in its samples; at
  # 0.5 the demo measured WER 0.91 vs 1.02, jitter face 2.6x vs 3.9x and head 1.8x vs 4.5x,
  # F1_smiles 0.88 vs 0.75, MCD 5.64 vs 5.94 dB (3k steps; the same at 10k), for less head
  # diversity (Div_h 1.48 vs 1.78, recordings 2.69). BENCHMARKS.md, "What the demo avatar learns".
  c.sample.temperature = 0.5
  c.log_every = 50
  c.eval_every = 1000
  c.ckpt_every = 1000
  return c
