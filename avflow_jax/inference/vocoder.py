"""Vocoders behind one interface: BigVGAN (Flax port) when weights exist, else Griffin-Lim.

Every vocoder takes a natural-log BigVGAN mel (T, 80) or (B, T, 80) on the 86.13 fps grid (the
`mel` record field, NOT z-normalised) and returns float32 audio at 22,050 Hz with exactly
T * 256 samples per item. AV-Flow's mels are of audio / 1.1, so use `mel_to_audio`, which
multiplies the waveform back by `AUDIO_GAIN` and clips it to [-1, 1].
"""

import abc
import functools
import math
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from avflow_jax.core import constants
from avflow_jax.models import bigvgan
from avflow_jax.models import bigvgan_checkpoint

_LOG_FLOOR = math.log(1e-5)  # log-mel of silence (BigVGAN's clamp)


def _as_batch(log_mel, num_mels: int) -> tuple[np.ndarray, bool]:
  x = np.asarray(log_mel, np.float32)
  if x.ndim not in (2, 3) or x.shape[-1] != num_mels:
    raise ValueError(f"vocoder input must be (T, {num_mels}) or (B, T, {num_mels}) log-mels, "
                     f"got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError("vocoder input log-mel contains NaN or inf")
  return (x[None], True) if x.ndim == 2 else (x, False)


def bucket_length(t: int, minimum: int = 32) -> int:
  """Frames to pad `t` to: a ~1.25x geometric ladder of multiples of 16 (few recompiles)."""
  b = minimum
  while b < t:
    b = int(math.ceil(b * 1.25 / 16)) * 16
  return b


class Vocoder(abc.ABC):
  """log-mel (T, 80) | (B, T, 80) -> float32 waveform (T*256,) | (B, T*256)."""
  name: str = "vocoder"
  sample_rate: int = constants.SAMPLE_RATE
  hop_length: int = constants.HOP_LENGTH
  num_mels: int = constants.N_MELS

  @abc.abstractmethod
  def __call__(self, log_mel) -> np.ndarray:
    ...


class BigVGANVocoder(Vocoder):
  """The Flax BigVGAN port; inputs are padded to length buckets so jit recompiles rarely."""

  def __init__(self, weights_path: str, config: bigvgan.BigVGANConfig | None = None):
    self.config, params = bigvgan_checkpoint.load_bigvgan(weights_path, config)
    self.name = "bigvgan"
    self.sample_rate = self.config.sampling_rate
    self.hop_length = self.config.hop_length
    self.num_mels = self.config.num_mels
    self._params = jax.device_put(params)
    model = bigvgan.BigVGAN(self.config)
    self._apply = jax.jit(lambda p, x: model.apply({"params": p}, x))

  def __call__(self, log_mel) -> np.ndarray:
    x, squeeze = _as_batch(log_mel, self.num_mels)
    t = x.shape[1]
    tp = bucket_length(t)
    # Silence after the clip: the receptive field barely reaches back into it.
    x = np.pad(x, ((0, 0), (0, tp - t), (0, 0)), constant_values=_LOG_FLOOR)
    y = np.asarray(self._apply(self._params, jnp.asarray(x)))[:, :t * self.hop_length]
    y = y.astype(np.float32)
    return y[0] if squeeze else y


class GriffinLimVocoder(Vocoder):
  """Slaney-mel inversion (NNLS) + Griffin-Lim with BigVGAN's STFT framing.

  BigVGAN frames are STFTs (center=False) of the clip reflect-padded by (n_fft - hop) / 2 = 384
  samples per side, so Griffin-Lim runs with center=False on a (T - 1) * hop + n_fft signal and
  the clip is the slice [384, 384 + T * hop).
  """

  def __init__(self, n_iter: int = 32, nnls_iters: int = 50, seed: int = 0):
    self.name = "griffin_lim"
    self.n_iter = n_iter
    self.nnls_iters = nnls_iters
    self.seed = seed

  @staticmethod
  @functools.lru_cache(maxsize=1)
  def _basis() -> np.ndarray:
    import librosa  # pylint: disable=g-import-not-at-top
    return librosa.filters.mel(sr=constants.SAMPLE_RATE, n_fft=constants.N_FFT,
                               n_mels=constants.N_MELS, fmin=constants.MEL_FMIN,
                               fmax=constants.MEL_FMAX, htk=False, norm="slaney",
                               dtype=np.float64)

  def _mel_to_magnitude(self, mel: np.ndarray) -> np.ndarray:
    """(80, T) mel magnitudes -> (513, T) non-negative STFT magnitudes.

    Non-negative least squares by multiplicative updates (S <- S * B'M / B'BS) started from
    the smooth B'M and stopped after `nnls_iters`. The early stop matters: librosa's
    `mel_to_stft` (L-BFGS, stops early on quiet bands) and an exact active-set NNLS (sparse,
    spiky spectra that no signal has) both give Griffin-Lim a worse target; measured on a
    harmonic test signal the re-analysed log-mel error is 0.35 (librosa), 0.50 (exact NNLS) and
    0.20 (this) against 0.11 for the true magnitudes.
    """
    basis = self._basis()
    s = np.maximum(basis.T @ mel, 1e-10)
    num = basis.T @ mel
    for _ in range(self.nnls_iters):
      s *= num / np.maximum(basis.T @ (basis @ s), 1e-20)
    return s

  def _one(self, log_mel: np.ndarray) -> np.ndarray:
    import librosa  # pylint: disable=g-import-not-at-top
    t = log_mel.shape[0]
    n_fft, hop = constants.N_FFT, constants.HOP_LENGTH
    mag = self._mel_to_magnitude(np.exp(log_mel.T.astype(np.float64)))
    z = librosa.griffinlim(
        mag, n_iter=self.n_iter, hop_length=hop, win_length=constants.WIN_LENGTH, n_fft=n_fft,
        window="hann", center=False, random_state=self.seed)
    pad = (n_fft - hop) // 2
    y = z[pad:pad + t * hop]
    return np.pad(y, (0, t * hop - y.size)).astype(np.float32)

  def __call__(self, log_mel) -> np.ndarray:
    x, squeeze = _as_batch(log_mel, self.num_mels)
    # The matrices are small (80 x 513): a multi-threaded BLAS only thrashes, 100x slower on a
    # loaded 2-core box. threadpoolctl ships with librosa (via scikit-learn).
    from threadpoolctl import threadpool_limits  # pylint: disable=g-import-not-at-top
    with threadpool_limits(limits=1, user_api="blas"):
      y = np.stack([self._one(m) for m in x])
    return y[0] if squeeze else y


def make_vocoder(weights_path: str | None = None) -> Vocoder:
  """BigVGAN when `weights_path` is given and exists, else Griffin-Lim (logged either way)."""
  if weights_path and os.path.exists(weights_path):
    voc = BigVGANVocoder(weights_path)
    logging.info("vocoder: BigVGAN from %s", weights_path)
    return voc
  if weights_path:
    logging.warning("vocoder: BigVGAN weights %s not found; falling back to Griffin-Lim",
                    weights_path)
  else:
    logging.info("vocoder: no BigVGAN weights given; using Griffin-Lim")
  return GriffinLimVocoder()


def mel_to_audio(vocoder: Vocoder, log_mel, clip: bool = True) -> np.ndarray:
  """Vocodes an AV-Flow mel (of audio / 1.1): waveform x AUDIO_GAIN, clipped to [-1, 1].

  With `clip=False` the waveform is returned unclipped, as the official code returns it (a
  float WAV keeps the peaks; a 16-bit one would wrap them).
  """
  y = vocoder(log_mel) * constants.AUDIO_GAIN
  return (np.clip(y, -1.0, 1.0) if clip else y).astype(np.float32)


# Mel frames of context each side of a streamed chunk. BigVGAN's receptive field (base 22 kHz
# config) reaches about 20 frames each way (conv_pre 3, the first upsampling's AMP blocks ~14 at
# 8x, the rest ~3); 32 leaves a margin, and a test holds the chunks to the whole-clip waveform.
BIGVGAN_CONTEXT_FRAMES = 32
# Griffin-Lim estimates each chunk's phase on its own, so two chunks agree only where they
# crossfade, and a long crossfade mixes two unrelated phases over more frames: measured on a
# trained avatar's mel (benchmarks/bench_streaming.py --vocoder-chunks, 16-frame chunks), the
# waveform's own log-mel is 0.210 from the mel it was made from with 2 frames of context and
# crossfade, 0.231 with 4, 0.276 with (16, 8), 0.191 for one whole-clip call; less context is
# also less work and look-ahead.
GRIFFIN_LIM_CONTEXT_FRAMES = 2
GRIFFIN_LIM_CROSSFADE_FRAMES = 2


class StreamingVocoder:
  """A vocoder on a mel stream: pushed log-mel frames in, the waveform of final frames out.

  Each chunk of `chunk_frames` frames [a, b) is vocoded inside the window [a - context, b + crossfade +
  context) and keeps its own samples. BigVGAN is a stack of convolutions, so with a context
  beyond its receptive field (`BIGVGAN_CONTEXT_FRAMES`) the chunks equal whole-clip vocoding (to
  1e-4), but for the last `context` frames of a stream, where the whole-clip call pads its end
  otherwise. Griffin-Lim estimates the phase of the whole window, so its chunks are joined by a
  linear crossfade over `crossfade` frames; the seams differ from one whole-clip Griffin-Lim
  (`benchmarks/bench_streaming.py` measures by how much).

  Attributes:
    lookahead_frames: mel frames needed past a frame before its samples are returned.
  """

  def __init__(self, vocoder: Vocoder, *, chunk_frames: int = 43,
               context_frames: int | None = None, crossfade_frames: int | None = None,
               gain: float = constants.AUDIO_GAIN, clip: bool = True):
    """Args:
      vocoder: the `Vocoder` to run on each window.
      chunk_frames: frames vocoded per call (43: 0.5 s).
      context_frames: mel frames of context each side (default: per vocoder, above).
      crossfade_frames: frames two Griffin-Lim chunks overlap by (BigVGAN: 0).
      gain, clip: as `mel_to_audio` (AV-Flow's mels are of audio / 1.1).
    """
    gl = isinstance(vocoder, GriffinLimVocoder)
    self._gl = gl
    self.vocoder, self.chunk = vocoder, int(chunk_frames)
    self.context = int(context_frames if context_frames is not None else
                       GRIFFIN_LIM_CONTEXT_FRAMES if gl else BIGVGAN_CONTEXT_FRAMES)
    self.crossfade = int(crossfade_frames if crossfade_frames is not None else
                         GRIFFIN_LIM_CROSSFADE_FRAMES if gl else 0)
    if self.chunk < 1 or self.context < 0 or not 0 <= self.crossfade <= self.chunk:
      raise ValueError(f"chunk_frames={chunk_frames}, context_frames={context_frames}, "
                       f"crossfade_frames={crossfade_frames}: need chunk >= 1, context >= 0 "
                       "and 0 <= crossfade <= chunk")
    self.gain, self.clip = float(gain), bool(clip)
    self.lookahead_frames = self.context + self.crossfade + self.chunk - 1
    self._mel = np.zeros((0, vocoder.num_mels), np.float32)
    self._mel_start = 0  # Frame index of self._mel[0].
    self._done = 0  # Frames whose samples were returned.
    self._tail = np.zeros(0, np.float32)  # Samples of the next crossfade frames, to blend.
    self.closed = False

  def push(self, log_mel) -> np.ndarray:
    """Adds (n, 80) log-mel frames; returns the samples that became final (maybe none)."""
    if self.closed:
      raise ValueError("push after close: start a new StreamingVocoder")
    x, single = _as_batch(log_mel, self.vocoder.num_mels)
    if not single:
      raise ValueError(f"StreamingVocoder.push takes (frames, {self.vocoder.num_mels}) log-mels "
                       f"of one stream, got shape {np.shape(log_mel)}")
    self._mel = np.concatenate([self._mel, x[0]], 0)
    return self._advance()

  def close(self) -> np.ndarray:
    """Ends the stream: the samples of every remaining frame."""
    self.closed = True
    return self._advance()

  def _advance(self) -> np.ndarray:
    hop = self.vocoder.hop_length
    end = self._mel_start + len(self._mel)
    # Whole chunks only (until the end): the windows, so the samples, depend on the frame grid,
    # not on how the mel was pushed.
    limit = end if self.closed else end - self.context - self.crossfade
    out = []
    while self._done < limit and (self.closed or self._done + self.chunk <= limit):
      a = self._done
      b = min(a + self.chunk, limit)
      fade = 0 if self.closed and b == end else min(self.crossfade, end - b)
      ws, we = max(0, a - self.context), min(end, b + fade + self.context)
      window = self._mel[ws - self._mel_start:we - self._mel_start]
      if not self._gl:  # One window length, so one compiled program: silence past its end
        # (beyond the receptive field of the frames kept, and what the whole-clip call pads).
        full = self.chunk + self.crossfade + 2 * self.context
        window = np.pad(window, ((0, full - len(window)), (0, 0)), constant_values=_LOG_FLOOR)
      y = self.vocoder(window)
      y = y[(a - ws) * hop:(b + fade - ws) * hop]
      if self._tail.size:  # Blend the previous chunk's overlap into this one's start.
        n = self._tail.size
        w = (np.arange(n, dtype=np.float32) + 0.5) / n
        y[:n] = (1.0 - w) * self._tail + w * y[:n]
      self._tail = y[(b - a) * hop:].copy()
      out.append(y[:(b - a) * hop])
      self._done = b
    keep = max(0, self._done - self.context) - self._mel_start
    self._mel, self._mel_start = self._mel[keep:], self._mel_start + keep
    y = np.concatenate(out) if out else np.zeros(0, np.float32)
    y = y * self.gain
    return (np.clip(y, -1.0, 1.0) if self.clip else y).astype(np.float32)
