"""Length buckets: inputs are padded to a few lengths so every call in a bucket reuses one program."""

from typing import Sequence, Union

import numpy as np

DEFAULT_BUCKET = 256  # Frames (2.97 s): at most 255 padded frames of work per call.


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
