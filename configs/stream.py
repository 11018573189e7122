"""The demo avatar made to stream: small right windows and a windowed head-VAE decoder.

  python -m avflow_jax.train --config configs/stream.py:2 --workdir runs/stream_r2
  python -m avflow_jax.train --config configs/stream.py:0,8 --workdir runs/stream_r0_t8

The argument is the right window R of every layer (default 2), optionally followed by the
token look-ahead K (default 0): the streaming sampler's exact look-ahead is 8 steps x 4 layers
x R frames (2: 64 frames, 0.74 s; 0: none) + K + the head decoder's right window (2). A model
with R = 0 sees no future frame but its tokens' K. Everything else is `configs/demo.py`, so
they compare directly.
"""

from configs import demo

HEAD_VAE_WINDOW = (32, 2)  # (left, right) frames of the head VAE's attention.


def get_config(arg=None):
  right, _, ahead = ("2" if arg in (None, "") else str(arg)).partition(",")
  c = demo.get_config()
  c.model.windows = (48, int(right))  # (left, right) frames per layer; the left as the demo's.
  c.model.token_lookahead = int(ahead or 0)  # Frames the tokens are read ahead.
  c.head_vae.window = HEAD_VAE_WINDOW  # A decoder that streams exactly (0.37 s back, 2 ahead).
  return c
