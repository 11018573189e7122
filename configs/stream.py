"""The demo avatar made to stream: small right windows and a windowed head-VAE decoder.

  python -m avflow_jax.train --config configs/stream.py:2 --workdir runs/stream_r2

The argument is the right window of every layer (default 2): the streaming sampler's exact
look-ahead is 8 steps x 4 layers x right frames (2: 64 frames, 0.74 s; 0: none) plus the head
decoder's right window. Everything else is `configs/demo.py`, so the two compare directly.
"""

from configs import demo

HEAD_VAE_WINDOW = (32, 2)  # (left, right) frames of the head VAE's attention.


def get_config(arg=None):
  right = 2 if arg in (None, "") else int(arg)
  c = demo.get_config()
  c.model.windows = (48, right)  # (left, right) frames per layer; the left as the demo's.
  c.head_vae.window = HEAD_VAE_WINDOW  # A decoder that streams exactly (0.37 s back, 2 ahead).
  return c
