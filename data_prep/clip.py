"""One raw clip -> one record on the mel grid (+ its stats sums)."""

import json
from typing import Optional

import numpy as np

from avflow_jax.core import align
from avflow_jax.core import audio as audio_lib
from avflow_jax.core import constants as C
from avflow_jax.core.errors import BadInput
from data_prep import headpose
from data_prep import mel as mel_lib
from data_prep import stats as stats_lib
from data_prep.source_types import RawClip

MIN_FRAMES = 8  # shorter clips are useless for training (and break the reflect pad).

_ASR_CACHE = {}  # weights path -> params, one load per worker process.


def asr_tokens(audio: np.ndarray, sample_rate: int, weights: Optional[str],
               what: str) -> np.ndarray:
  """(N_tok, 29) tokens from the JAX wav2vec2 port (`data_prep.asr`, imported lazily).

  Raises:
    BadInput: no weights given (the clip has no token file).
  """
  if not weights:
    raise BadInput(f"{what}: no ASR token file and no --asr-weights to compute them",
                   "tokens missing")
  from avflow_jax.models import asr  # pylint: disable=g-import-not-at-top  (JAX model, heavy)
  if weights not in _ASR_CACHE:
    _ASR_CACHE[weights] = asr.load_asr(weights)
  tok = np.asarray(asr.extract_tokens(np.asarray(audio, np.float32), sample_rate,
                                      _ASR_CACHE[weights]), np.float32)
  if tok.ndim != 2 or tok.shape[1] != C.TOKEN_DIM or tok.shape[0] == 0:
    raise BadInput(f"{what}: the ASR port returned shape {tok.shape}", "asr failure")
  return tok


def _utterances_json(utterances, num_frames: int) -> str:
  return json.dumps([{"text": text, "start": align.seconds_to_frame(start, num_frames),
                      "end": align.seconds_to_frame(end, num_frames)}
                     for text, start, end in utterances], ensure_ascii=False)


def build_record(raw: RawClip, asr_weights: Optional[str] = None,
                 source: str = "") -> tuple[dict, dict]:
  """Puts every stream of `raw` on the mel grid.

  Args:
    raw: checked native-rate streams (readers.load_clip).
    asr_weights: wav2vec2 safetensors for clips without token files.
    source: the clip's audio file, named in error messages.

  Returns:
    (record dict as in docs/data_format.md, {stream: clip_sums}).

  Raises:
    BadInput: too short, or tokens needed but unavailable.
  """
  audio22 = audio_lib.resample(raw.audio, raw.sample_rate)
  t = mel_lib.num_frames(audio22.shape[0])
  if t < MIN_FRAMES:
    raise BadInput(f"{source}: {audio22.shape[0] / C.SAMPLE_RATE:.3f} s of audio gives {t} "
                   f"mel frames (< {MIN_FRAMES})", "too short")
  # The stored int16 audio is what the mel is computed from, so a record is self-consistent.
  pcm = audio_lib.to_int16(audio22[:t * C.HOP_LENGTH])
  mel = mel_lib.clip_mel(audio_lib.from_int16(pcm))
  audio_seconds = raw.audio.shape[0] / raw.sample_rate

  tokens, token_rate = raw.tokens, raw.token_rate
  if tokens is None:
    tokens = asr_tokens(raw.audio, raw.sample_rate, asr_weights, source)
    token_rate = align.stretched_rate(tokens.shape[0], audio_seconds)
  record = {"name": raw.name, "mel": mel,
            "tokens": align.resample_stream(tokens, token_rate, t)}
  sums = {"mel": stats_lib.clip_sums(mel), "tokens": stats_lib.clip_sums(record["tokens"])}

  if raw.face is not None:
    filled = align.fill_missing(raw.face, raw.face_observed)
    face = align.resample_stream(filled, raw.face_rate, t)
    mask = align.resample_mask(raw.face_observed, raw.face_rate, t)
    head = align.resample_stream(raw.head, raw.head_rate, t)
    if raw.head_is_quat:
      head = headpose.renormalise_quaternions(head)
    record.update(face=face, face_mask=mask, head=head)
    # Frames whose code was interpolated do not count towards the face statistics.
    sums.update(face=stats_lib.clip_sums(face, mask), head=stats_lib.clip_sums(head))

  if raw.smirk is not None:
    p_tok, p_rate = raw.participant_tokens, raw.participant_token_rate
    if p_tok is None:
      p_tok = asr_tokens(raw.participant_audio, raw.sample_rate, asr_weights,
                         f"{source} (participant channel)")
      p_rate = align.stretched_rate(p_tok.shape[0], audio_seconds)
    participant = np.concatenate([align.resample_stream(p_tok, p_rate, t),
                                  align.resample_stream(raw.smirk, raw.smirk_rate, t)], -1)
    record["participant"] = participant
    sums["participant"] = stats_lib.clip_sums(participant)

  record["audio"] = pcm
  if raw.text is not None:
    record["text"] = raw.text
    record["utterances"] = _utterances_json(raw.utterances or [], t)
  for key, value in record.items():
    if isinstance(value, np.ndarray) and value.dtype.kind == "f" and not np.isfinite(
        value).all():
      raise BadInput(f"{source}: non-finite values in the {key} stream", "NaN/Inf")
  return record, sums
