"""BigVGAN base 22 kHz / 80-band log-mel spectrogram in numpy (no torch).

Reproduces `bigvgan.meldataset.mel_spectrogram` (n_fft 1024, hop 256, win 1024, 80 bands,
0-8 kHz, center=False after a manual reflect pad of 384 samples, periodic Hann window,
|X| = sqrt(re^2 + im^2 + 1e-9), librosa Slaney mel basis, natural log floored at 1e-5).
A clip of N samples gives exactly N // 256 frames.
"""

import functools

import numpy as np

from avflow_jax.core import constants as C

_PAD = (C.N_FFT - C.HOP_LENGTH) // 2  # 384: makes the frame count N // hop.
_CHUNK_FRAMES = 512  # bounds the float64 STFT buffers (~4 MB), keeps them in cache.


@functools.lru_cache(maxsize=None)
def mel_basis() -> np.ndarray:
  """Slaney-normalised mel filterbank, (80, 513) float64 (librosa defaults, like BigVGAN)."""
  import librosa  # pylint: disable=g-import-not-at-top  (slow import, needed once)
  return librosa.filters.mel(sr=C.SAMPLE_RATE, n_fft=C.N_FFT, n_mels=C.N_MELS,
                             fmin=C.MEL_FMIN, fmax=C.MEL_FMAX, dtype=np.float64)


@functools.lru_cache(maxsize=None)
def _used_basis() -> tuple[np.ndarray, int]:
  """(bins, 80) transposed basis cut after its last non-zero bin (fmax 8 kHz < Nyquist)."""
  basis = mel_basis()
  n_bins = int(np.flatnonzero(basis.any(axis=0))[-1]) + 1
  return np.ascontiguousarray(basis[:, :n_bins].T), n_bins


@functools.lru_cache(maxsize=None)
def hann_window() -> np.ndarray:
  """Periodic Hann window of length 1024 (torch.hann_window's default)."""
  n = np.arange(C.WIN_LENGTH, dtype=np.float64)
  return 0.5 - 0.5 * np.cos(2.0 * np.pi * n / C.WIN_LENGTH)


def num_frames(num_samples: int) -> int:
  """Mel frames of a 22.05 kHz signal of `num_samples` samples."""
  return num_samples // C.HOP_LENGTH


def log_mel(audio: np.ndarray) -> np.ndarray:
  """BigVGAN log-mel of a mono float waveform at 22,050 Hz.

  Args:
    audio: (N,) float waveform in [-1, 1] (no gain applied here), N >= 385 (the reflect
      pad needs more samples than the pad width).

  Returns:
    (N // 256, 80) float32 natural-log mel spectrogram.
  """
  audio = np.asarray(audio, dtype=np.float64)
  if audio.ndim != 1:
    raise ValueError(f"log_mel expects a mono waveform, got shape {audio.shape}")
  n_frames = num_frames(audio.shape[0])
  if n_frames == 0:
    return np.zeros((0, C.N_MELS), np.float32)
  padded = np.pad(audio, (_PAD, _PAD), mode="reflect")
  # Strided view: frame i covers padded[i * hop : i * hop + n_fft] (center=False).
  frames = np.lib.stride_tricks.sliding_window_view(padded, C.N_FFT)[::C.HOP_LENGTH]
  frames = frames[:n_frames]
  window, (basis, n_bins) = hann_window(), _used_basis()
  out = np.empty((n_frames, C.N_MELS), np.float32)
  for start in range(0, n_frames, _CHUNK_FRAMES):
    spec = np.fft.rfft(frames[start:start + _CHUNK_FRAMES] * window, axis=-1)[:, :n_bins]
    mag = np.sqrt(spec.real ** 2 + spec.imag ** 2 + 1e-9)
    mel = mag @ basis
    out[start:start + _CHUNK_FRAMES] = np.log(np.maximum(mel, 1e-5))
  return out


def clip_mel(audio: np.ndarray) -> np.ndarray:
  """The stored `mel` of a clip: `log_mel(audio / AUDIO_GAIN)` (AV-Flow divides by 1.1)."""
  return log_mel(np.asarray(audio, np.float64) / C.AUDIO_GAIN)
