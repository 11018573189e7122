"""Reading, checking and resampling wav files (soundfile + soxr, no torch)."""

import os
import struct

import numpy as np

from avflow_jax.core import constants as C
from avflow_jax.core.errors import BadInput

# Limits of `read_wav`, checked on the header before any sample is decoded (a header can claim
# any length; decoding allocates frames x channels floats). Three hours is a long recording
# session (a stereo 48 kHz one is ~4 GB as float32); the generic data layout accepts up to 64
# channels; 384 kHz is the highest rate audio hardware records.
MAX_WAV_SECONDS = 3 * 3600
MAX_WAV_CHANNELS = 64
MAX_WAV_SAMPLE_RATE = 384_000


def _check_riff_complete(path: str) -> None:
  """Raises BadInput when a RIFF/WAVE file's data chunk is shorter than its header says.

  libsndfile silently reads what is there, so a truncated copy would otherwise pass.
  """
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
      return  # Not a plain RIFF wav (e.g. FLAC, RF64): leave it to libsndfile.
    endian = "<" if head[:4] == b"RIFF" else ">"
    pos = 12
    while pos + 8 <= size:
      f.seek(pos)
      chunk_id, chunk_size = struct.unpack(endian + "4sI", f.read(8))
      if chunk_id == b"data":
        # 0 and 0xFFFFFFFF mark streamed wavs whose size was never filled in.
        if chunk_size not in (0, 0xFFFFFFFF) and pos + 8 + chunk_size > size:
          raise BadInput(f"{path}: truncated wav (data chunk declares {chunk_size} bytes, "
                         f"{size - pos - 8} present)", "truncated wav")
        return
      pos += 8 + chunk_size + (chunk_size & 1)
    raise BadInput(f"{path}: wav has no data chunk", "unreadable audio")


def read_wav(path: str, channels: tuple[int, ...] = (1,), *,
             max_seconds: float = MAX_WAV_SECONDS, max_channels: int = MAX_WAV_CHANNELS,
             max_sample_rate: int = MAX_WAV_SAMPLE_RATE) -> tuple[np.ndarray, int]:
  """Reads a wav as float32 (N, ch) and checks it.

  Args:
    path: audio file.
    channels: accepted channel counts.
    max_seconds: the longest audio accepted (checked on the header, before decoding).
    max_channels: the most channels accepted (likewise).
    max_sample_rate: the highest sample rate accepted (likewise).

  Returns:
    (audio (N, ch) float32 in [-1, 1], sample_rate).

  Raises:
    BadInput: unreadable or truncated file, wrong channel count, empty, over a limit, or
      NaN/Inf samples; the message is one line naming the file.
  """
  import soundfile as sf  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise BadInput(f"{path}: file missing", "missing file")
  _check_riff_complete(path)
  try:
    info = sf.info(path)
  except Exception as e:  # libsndfile raises its own error types.
    raise BadInput(f"{path}: unreadable audio ({' '.join(str(e).split())})",
                   "unreadable audio") from e
  if not 0 < info.samplerate <= max_sample_rate:
    raise BadInput(f"{path}: sample rate {info.samplerate} Hz is outside 1..{max_sample_rate}",
                   "bad sample rate")
  if not 0 < info.channels <= max_channels:
    raise BadInput(f"{path}: {info.channels} channel(s), over the limit of {max_channels}",
                   "wrong channel count")
  if info.frames > max_seconds * info.samplerate:
    raise BadInput(f"{path}: {info.frames} frames at {info.samplerate} Hz "
                   f"({info.frames / info.samplerate:.0f} s), over the limit of "
                   f"{max_seconds:g} s", "too long")
  try:
    # At most the frames the header declared (and was checked for): the allocation is bounded.
    audio, sr = sf.read(path, frames=info.frames, dtype="float32", always_2d=True)
  except Exception as e:  # libsndfile raises its own error types.
    raise BadInput(f"{path}: unreadable audio ({' '.join(str(e).split())})",
                   "unreadable audio") from e
  if audio.shape[1] not in channels:
    raise BadInput(f"{path}: {audio.shape[1]} channel(s), expected "
                   f"{' or '.join(map(str, channels))}", "wrong channel count")
  if audio.shape[0] == 0:
    raise BadInput(f"{path}: no samples", "too short")
  if not np.isfinite(audio).all():
    raise BadInput(f"{path}: NaN/Inf samples", "NaN/Inf")
  return audio, int(sr)


def resample(audio: np.ndarray, sr_in: int, sr_out: int = C.SAMPLE_RATE) -> np.ndarray:
  """soxr (HQ) resampling of a mono float signal; identity when the rates agree."""
  audio = np.asarray(audio, np.float32)
  if sr_in == sr_out:
    return audio
  import soxr  # pylint: disable=g-import-not-at-top
  return soxr.resample(audio, sr_in, sr_out, quality="HQ").astype(np.float32)


def to_int16(audio: np.ndarray) -> np.ndarray:
  """Float [-1, 1] -> int16 with scale 32768 (float = int16 / 32768), clipped."""
  return np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768,
                 32767).astype(np.int16)


def from_int16(audio: np.ndarray) -> np.ndarray:
  """Inverse of `to_int16` (up to quantisation)."""
  return np.asarray(audio, np.float32) / 32768.0
