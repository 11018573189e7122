"""Length buckets and the length limit of one sampler call.

Inputs are padded to a few lengths so every call in a bucket reuses one program. The sampler's
memory grows linearly with the padded length (the DiT's attention is windowed, the head VAE's is
computed per query block): its compiled temp buffers take about 1 MiB per second of content with
configs/demo.py and 2.4 MiB with configs/base.py, per sample, besides the vocoder's and the
outputs' (`sample` with the demo avatar: 1.1 GB resident for 2 minutes, 2.8 GB for 10). Its time
grows faster, the head VAE's attention being full. `DEFAULT_MAX_SECONDS` is the longest input a
call accepts unless told otherwise; a longer one is refused before anything is computed.
"""

import math
from typing import Sequence, Union

import numpy as np

from avflow_jax.core import constants as C
from avflow_jax.core.errors import AvatarError

DEFAULT_BUCKET = 256  # Frames (2.97 s): at most 255 padded frames of work per call.
# 20 minutes: twice the longest input measured end to end (10 minutes of tokens, demo avatar).
DEFAULT_MAX_SECONDS = 1200.0


def bucket_frames(t: int, buckets: Union[int, Sequence[int]] = DEFAULT_BUCKET) -> int:
  """The padded length for `t` frames.

  Args:
    t: frames (>= 1).
    buckets: an int b (pad to the next multiple of b) or an ascending list of lengths (pad to
      the smallest one >= t; beyond the last, to the next multiple of the last).
  """
  if isinstance(buckets, (int, np.integer)):
    b = int(buckets)
    if b < 1:
      raise ValueError(f"buckets={buckets}: must be >= 1")
    return max(1, -(-t // b)) * b
  ladder = sorted(int(x) for x in buckets)
  if not ladder or ladder[0] < 1:
    raise ValueError(f"buckets={buckets}: need positive lengths")
  for b in ladder:
    if b >= t:
      return b
  return -(-t // ladder[-1]) * ladder[-1]


def check_max_seconds(max_seconds: float, what: str = "max_seconds") -> float:
  """`max_seconds` as a float > 0 (inf: no limit); AvatarError naming `what` otherwise."""
  try:
    value = float(max_seconds)
  except (TypeError, ValueError):
    value = math.nan
  if math.isnan(value) or value <= 0:
    raise AvatarError(f"{what} {max_seconds!r}: must be a number of seconds > 0 (inf: no limit)")
  return value


def check_length(num_frames: int, max_seconds: float = DEFAULT_MAX_SECONDS, *,
                 what: str = "input", hint: str = "split it, or raise max_seconds") -> None:
  """Refuses `num_frames` mel frames longer than `max_seconds`, in one line.

  Args:
    num_frames: the input's length in mel frames (86.13 fps).
    max_seconds: the limit.
    what: the input's name in the message.
    hint: what to do about it, for the message.

  Raises:
    AvatarError: the input is longer than the limit.
  """
  seconds = num_frames / C.FRAME_RATE
  if seconds > max_seconds:
    raise AvatarError(f"{what} is {seconds:.1f} s ({num_frames} frames), longer than the sampling "
                      f"limit of {max_seconds:g} s (sampling memory grows with length); {hint}")
