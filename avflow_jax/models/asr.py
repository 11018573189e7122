"""Per-frame ASR tokens (wav2vec 2.0 base 960h CTC logits) and greedy CTC decoding.

Follows the official AV-Flow extraction: 16 kHz audio cut into independent chunks (20 s by
default here, 100 s officially), each
run through the CTC model, logits concatenated in time (999 frames per 20 s chunk, 4999 per
100 s) and kept
unnormalised; the 29 token columns are the HF logits `[0, 4, 5, ..., 31]`
(`avflow_jax.constants.HF_TO_TOKEN_INDEX`). Unlike torchaudio's bundle we normalise the waveform
per utterance like the HF processor; the model is (almost) invariant to gain and DC anyway.

The last (short) chunk is zero-padded to one of a few bucket lengths so jit compiles a bounded
number of shapes; the model masks the padding, so the result equals the unpadded forward.
"""

import dataclasses
import logging
import time
from typing import Any, Callable, Optional, Sequence

import jax
import numpy as np
import soxr

from avflow_jax.core import constants as C
from avflow_jax.models import wav2vec2 as w2v
from avflow_jax.models import wav2vec2_checkpoint

ASR_SAMPLE_RATE = 16000
# The official extraction used 100 s chunks; attention is quadratic in the chunk, so 100 s runs
# at 6.7x real time on 2 CPU cores against 13.2x for 20 s (measured), and wav2vec 2.0 was trained
# on utterances under ~35 s. Pass chunk_seconds=100 to reproduce the official tokens.
DEFAULT_CHUNK_SECONDS = 20.0
# Padded lengths of a chunk shorter than the chunk size (seconds); at most ~1.33x padding.
BUCKET_SECONDS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100)
NORM_EPS = 1e-7  # HF Wav2Vec2FeatureExtractor zero-mean unit-var normalisation.


@dataclasses.dataclass(frozen=True)
class AsrModel:
  """A loaded CTC model: config, params and the jitted `forward(params, audio, lengths)`."""
  config: w2v.Wav2Vec2Config
  params: Any
  forward: Callable[..., jax.Array]


def make_asr_model(config: w2v.Wav2Vec2Config, params) -> AsrModel:
  """Wraps config + params with a jitted forward (one compilation per input length)."""
  forward = jax.jit(lambda p, audio, lengths: w2v.wav2vec2_logits(config, p, audio, lengths))
  return AsrModel(config, params, forward)


def load_asr(path: str) -> AsrModel:
  """Loads HF wav2vec2 CTC weights (`model.safetensors` or its directory); see load_wav2vec2."""
  config, params = wav2vec2_checkpoint.load_wav2vec2(path)
  return make_asr_model(config, params)


def normalize_waveform(x: np.ndarray) -> np.ndarray:
  """(x - mean) / sqrt(var + 1e-7) over the whole utterance, as the HF processor does."""
  x64 = np.asarray(x, np.float64)
  return ((x64 - x64.mean()) / np.sqrt(x64.var() + NORM_EPS)).astype(np.float32)


def bucket_samples(chunk_samples: int) -> tuple:
  """Allowed padded lengths (samples) for a chunk: the buckets below the chunk size + itself."""
  sizes = [int(s * ASR_SAMPLE_RATE) for s in BUCKET_SECONDS]
  return tuple(s for s in sizes if s < chunk_samples) + (chunk_samples,)


def _padded_length(n: int, buckets: Sequence[int]) -> int:
  return next(b for b in buckets if b >= n)


def extract_tokens(audio: np.ndarray, sample_rate: int, model: AsrModel,
                   chunk_seconds: float = DEFAULT_CHUNK_SECONDS, normalize: bool = True,
                   progress: Optional[bool] = None) -> np.ndarray:
  """Per-frame ASR token logits of a mono waveform.

  Args:
    audio: (N,) waveform (float, any scale).
    sample_rate: its rate in Hz; resampled to 16 kHz with soxr.
    model: from `load_asr` / `make_asr_model`.
    chunk_seconds: independent chunk length (memory is bounded by one chunk; attention cost
      grows with it). 100 s reproduces the official extraction; the default 20 s is faster.
    normalize: per-utterance zero-mean / unit-variance normalisation before chunking.
    progress: show a tqdm bar over chunks; None = only for long files (> 10 chunks, i.e.
      ~17 min at the default chunk size, which takes minutes on a CPU).

  Returns:
    (N_tok, 29) float32 unnormalised logits in `avflow_jax.constants.TOKEN_LABELS` order,
    N_tok = sum over chunks of floor((n_chunk - 400) / 320) + 1 (base model); a trailing piece
    shorter than the receptive field (25 ms) yields no frame.

  Raises:
    ValueError: audio not 1-D, empty, non-finite, or bad rate / chunk size.
  """
  audio = np.asarray(audio)
  if audio.ndim != 1:
    raise ValueError(f"extract_tokens: audio must be mono (N,), got shape {audio.shape}")
  if audio.size == 0:
    raise ValueError("extract_tokens: audio is empty")
  if not np.all(np.isfinite(audio)):
    raise ValueError("extract_tokens: audio contains NaN or inf samples")
  if not sample_rate or sample_rate <= 0:
    raise ValueError(f"extract_tokens: bad sample_rate {sample_rate}")
  cfg = model.config
  if cfg.vocab_size != 32:
    raise ValueError(f"extract_tokens: the token columns assume the 32-letter wav2vec2-960h "
                     f"vocabulary, the model has vocab_size={cfg.vocab_size}")
  chunk = int(round(chunk_seconds * ASR_SAMPLE_RATE))
  if chunk < cfg.receptive_field:
    raise ValueError(f"extract_tokens: chunk_seconds={chunk_seconds} is shorter than the "
                     f"model's receptive field ({cfg.receptive_field} samples)")

  x = np.asarray(audio, np.float32)
  if sample_rate != ASR_SAMPLE_RATE:
    x = soxr.resample(x, sample_rate, ASR_SAMPLE_RATE).astype(np.float32)
  if normalize:
    x = normalize_waveform(x)
  buckets = bucket_samples(chunk)
  starts = [s for s in range(0, len(x), chunk)
            if min(chunk, len(x) - s) >= cfg.receptive_field]
  if progress or (progress is None and len(starts) > 10):
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    starts = tqdm(starts, desc="asr chunks", unit="chunk")
  outs = []
  for start in starts:
    piece = x[start:start + chunk]
    padded = np.zeros((1, _padded_length(len(piece), buckets)), np.float32)
    padded[0, :len(piece)] = piece
    logits = model.forward(model.params, padded, np.array([len(piece)], np.int32))
    outs.append(np.asarray(logits[0, :w2v.output_lengths(cfg, len(piece))]))
  if not outs:
    return np.zeros((0, C.TOKEN_DIM), np.float32)
  logits = np.concatenate(outs, axis=0)
  return np.ascontiguousarray(logits[:, list(C.HF_TO_TOKEN_INDEX)], dtype=np.float32)


def greedy_ctc_decode(tokens: np.ndarray) -> str:
  """Greedy CTC transcript of (N_tok, 29) token logits.

  Argmax per frame, collapse repeats, drop the blank ('-'), '|' becomes a space; runs of spaces
  are collapsed and the ends stripped. Letters are upper case as in `TOKEN_LABELS`.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or tokens.shape[1] != C.TOKEN_DIM:
    raise ValueError(f"greedy_ctc_decode: expected (N, {C.TOKEN_DIM}) logits, got "
                     f"{tokens.shape}")
  ids = np.argmax(tokens, axis=-1)
  chars = []
  prev = -1
  for i in ids:
    if i != prev and i != 0:
      chars.append(" " if C.TOKEN_LABELS[i] == "|" else C.TOKEN_LABELS[i])
    prev = i
  return " ".join("".join(chars).split())


def benchmark_realtime_factor(seconds: float = 20.0, repeats: int = 3,
                              config: Optional[w2v.Wav2Vec2Config] = None,
                              chunk_seconds: float = DEFAULT_CHUNK_SECONDS) -> float:
  """Speed of `extract_tokens` on random weights, in audio seconds per wall second.

  Runs one warm-up call (compilation) and reports the best of `repeats` timed calls on
  `seconds` of 16 kHz noise. Threads are whatever the process's XLA flags allow.

  Args:
    seconds: audio length.
    repeats: timed calls.
    config: architecture (default: base 960h).
    chunk_seconds: passed to `extract_tokens`.

  Returns:
    The real-time factor (e.g. 10.0 = ten times faster than real time).
  """
  config = config or w2v.Wav2Vec2Config()
  model = make_asr_model(config, w2v.init_params(config))
  x = np.random.default_rng(0).standard_normal(int(seconds * ASR_SAMPLE_RATE)).astype(np.float32)
  t0 = time.perf_counter()
  extract_tokens(x, ASR_SAMPLE_RATE, model, chunk_seconds)
  compile_s = time.perf_counter() - t0
  wall, cpu = [], []
  for _ in range(max(1, repeats)):
    t0, c0 = time.perf_counter(), time.process_time()
    extract_tokens(x, ASR_SAMPLE_RATE, model, chunk_seconds)
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  factor = seconds / min(wall)
  logging.info("wav2vec2 port: %.1f s audio in %.2f s wall (%.2f s CPU) = %.1fx real time; "
               "first call (compile) %.1f s", seconds, min(wall), min(cpu), factor, compile_s)
  return factor
