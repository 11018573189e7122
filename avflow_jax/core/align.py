"""Puts every per-frame stream on the mel frame grid (86.1328125 fps).

`resample_stream` is the one place where a stream changes rate: face codes, head pose,
masks, participant features and ASR tokens all go through it, so every stream of a clip
ends up with T = len(audio_22k) // 256 frames.

Convention (PyTorch `interpolate(mode="linear", align_corners=False)`, but driven by the
true rates rather than the lengths): native frame k of a stream at `rate` fps covers
[k, k + 1) / rate seconds and its value sits at the centre (k + 0.5) / rate. Output frame i
samples time (i + 0.5) / 86.1328125 by linear interpolation between the two nearest native
centres; times before the first or after the last centre take the edge value.
"""

import math

import numpy as np

from avflow_jax.core import constants as C
from avflow_jax.core.errors import BadInput

# Nominal wav2vec2 frame rate: hop 320 at 16 kHz; each chunk (20 s by default) loses one frame.
TOKEN_HOP_RATE = 50.0


def source_positions(src_rate: float, num_frames: int,
                     dst_rate: float = C.FRAME_RATE) -> np.ndarray:
  """Fractional native-frame index sampled by each of `num_frames` output frames."""
  return (np.arange(num_frames, dtype=np.float64) + 0.5) * (src_rate / dst_rate) - 0.5


def resample_stream(x: np.ndarray, src_rate: float, num_frames: int,
                    dst_rate: float = C.FRAME_RATE) -> np.ndarray:
  """Linearly resamples a per-frame stream onto the output grid.

  Args:
    x: (N, ...) stream at `src_rate` frames per second, N >= 1.
    src_rate: native frame rate (fps).
    num_frames: output length T.
    dst_rate: output frame rate (the mel grid by default).

  Returns:
    (T, ...) float32, deterministic (float64 arithmetic).
  """
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  if n == 0:
    raise ValueError("cannot resample an empty stream")
  pos = np.clip(source_positions(src_rate, num_frames, dst_rate), 0.0, n - 1)
  i0 = np.floor(pos).astype(np.int64)
  i1 = np.minimum(i0 + 1, n - 1)
  w = (pos - i0).reshape((-1,) + (1,) * (x.ndim - 1))
  return (x[i0] * (1.0 - w) + x[i1] * w).astype(np.float32)


# The official sampler's token upsampling (utils/test.py `upsample`): a fixed scale from a
# nominal 49.99 fps to 86.13281230 fps, floor(N * scale) frames, whatever the audio's length.
OFFICIAL_TOKEN_RATE = 49.99
OFFICIAL_FRAME_RATE = 86.13281230


def official_token_upsample(x: np.ndarray) -> np.ndarray:
  """ASR tokens at the wav2vec2 rate -> the mel grid, exactly as the official sampler does.

  PyTorch's `interpolate(scale_factor=s, mode="linear", align_corners=False)` with
  s = 86.13281230 / 49.99: floor(N * s) output frames, output frame i reads source position
  max(0, (i + 0.5) / s - 0.5). The project's own path (`resample_stream` at the stretched rate
  to the mel length of the audio) differs by a fraction of a frame and in length.
  """
  n = int(math.floor(np.asarray(x).shape[0] * (OFFICIAL_FRAME_RATE / OFFICIAL_TOKEN_RATE)))
  return resample_stream(x, OFFICIAL_TOKEN_RATE, n, OFFICIAL_FRAME_RATE)


def resample_mask(observed: np.ndarray, src_rate: float, num_frames: int) -> np.ndarray:
  """Observation mask on the mel grid: the "any missing neighbour" rule.

  A mel frame is observed (1) only when every native frame that gets a non-zero weight in
  its interpolation was observed; i.e. the resampled 0/1 mask must equal 1 exactly.

  Args:
    observed: (N,) bool / 0-1 per native frame.
    src_rate: native frame rate.
    num_frames: output length T.

  Returns:
    (T,) float32 of 0.0 / 1.0.
  """
  soft = resample_stream(np.asarray(observed, np.float64), src_rate, num_frames)
  return (soft >= 1.0 - 1e-6).astype(np.float32)


def fill_missing(codes: np.ndarray, observed: np.ndarray) -> np.ndarray:
  """Linearly interpolates the rows of `codes` whose frame is not observed.

  Every run of missing frames (including one at the start or at the end, which take the
  nearest observed value) is filled from its observed neighbours.

  Args:
    codes: (N, D) per-frame codes.
    observed: (N,) bool.

  Returns:
    (N, D) float64 copy with the missing rows filled.

  Raises:
    ValueError: no frame is observed.
  """
  codes = np.array(codes, np.float64)
  observed = np.asarray(observed, bool)
  valid = np.flatnonzero(observed)
  if valid.size == 0:
    raise ValueError("all frames are missing")
  missing = np.flatnonzero(~observed)
  if missing.size == 0:
    return codes
  # Right neighbour = first valid index > m; left = the one before it; clamp at the edges.
  r = np.searchsorted(valid, missing)
  left = valid[np.clip(r - 1, 0, valid.size - 1)]
  right = valid[np.clip(r, 0, valid.size - 1)]
  span = np.maximum(right - left, 1)
  w = np.where(right == left, 0.0, (missing - left) / span)[:, None]
  codes[missing] = codes[left] * (1.0 - w) + codes[right] * w
  return codes


def check_duration(path: str, num: int, rate: float, audio_seconds: float,
                   tolerance: float = 1.0) -> None:
  """Raises BadInput when a stream's duration disagrees with the audio's.

  Args:
    path: the stream's file (named in the message).
    num: native frames in the stream.
    rate: its native rate (fps).
    audio_seconds: the audio's duration.
    tolerance: allowed disagreement in native frames.
  """
  expected = audio_seconds * rate
  if abs(num - expected) > tolerance:
    raise BadInput(f"{path}: {num} frames at {rate:g} fps ({num / rate:.3f} s) but the audio "
                   f"lasts {audio_seconds:.3f} s (expected {expected:.1f} +- {tolerance:g} "
                   "frames)", "duration mismatch")


def check_token_count(path: str, num: int, audio_seconds: float) -> None:
  """Checks an ASR token stream (~50 Hz, one frame lost per chunk of >= 20 s) against the audio."""
  tolerance = 2.0 + math.ceil(audio_seconds / 20.0)
  check_duration(path, num, TOKEN_HOP_RATE, audio_seconds, tolerance)


def stretched_rate(num: int, duration_seconds: float) -> float:
  """Rate at which `num` frames exactly span `duration_seconds` (AV-Flow's token stretch)."""
  return num / duration_seconds


def seconds_to_frame(seconds: float, num_frames: int) -> int:
  """Nearest mel frame boundary of a time, clamped to [0, num_frames]."""
  return int(min(max(round(seconds * C.FRAME_RATE), 0), num_frames))
