"""Word error rate of speech with a real recogniser: PocketSphinx (offline) scored by jiwer.

PocketSphinx 5 ships its US-English acoustic model, dictionary and language model inside the
wheel, so the recogniser installs and runs without a network (`pip install
"avflow_jax[wer]"`). It is weak on its own (0.64 WER on the demo's eSpeak recordings), so a WER
means something only beside the rows it is compared with: the recordings, and the recordings'
mels through the same vocoder as the samples (what a perfect mel would score).

Texts are normalised the same way on both sides (the text front end's cleaner: ASCII,
lowercase, numbers spelled out; then punctuation dropped) before jiwer counts word edits over
the whole set of utterances (corpus WER: total edits / total reference words).
"""

import re
from typing import Optional, Sequence

import numpy as np

from avflow_jax.text import cleaners

RECOGNISER_RATE = 16_000  # PocketSphinx's en-us model is trained on 16 kHz speech.
# Context kept around each utterance span (s): the transcript's times are word boundaries.
PAD_S = 0.15
# Gaussian dither (std, full scale 1) added before recognition, from a fixed seed: exact digital
# silence (eSpeak's pauses, zero padding) breaks PocketSphinx's feature normalisation
# ("please remember to bring your umbrella tomorrow" -> "the or" without it). -60 dBFS, as
# recognisers' front ends dither (Kaldi's default is 1 LSB of 16-bit audio, ~-90 dBFS).
DITHER = 1e-3
# PocketSphinx's cap on active HMMs per frame (default: none). Measured on 15 demo val
# utterances: the recordings' WER 0.338 -> 0.331 and the generated speech's 1.06 -> 1.05, in
# half the time (unintelligible speech keeps the whole search alive without it).
MAX_HMM_PER_FRAME = 3000
INSTALL_HINT = 'pip install "avflow_jax[wer]" (pocketsphinx and jiwer)'


def unavailable_reason() -> Optional[str]:
  """None when the recogniser and the scorer import, else why not (one line)."""
  missing = []
  for module in ("pocketsphinx", "jiwer"):
    try:
      __import__(module)
    except ImportError:
      missing.append(module)
  if missing:
    return f"{' and '.join(missing)} not installed: {INSTALL_HINT}"
  return None


def normalise(text: str) -> str:
  """Lowercase words without punctuation, numbers spelled out ("Two friends." -> "two friends")."""
  text = cleaners.clean_text(text)
  return " ".join(re.sub(r"[^a-z' ]+", " ", text).replace(" '", " ").split())


class Recognizer:
  """PocketSphinx with its built-in US-English models, one decoder reused for every utterance
  (its feature front end reset before each, so every transcript is independent of the others)."""

  def __init__(self):
    reason = unavailable_reason()
    if reason:
      raise ImportError(reason)
    import pocketsphinx  # pylint: disable=g-import-not-at-top  (optional dependency)
    self._decoder = pocketsphinx.Decoder(samprate=RECOGNISER_RATE, loglevel="FATAL",
                                         maxhmmpf=MAX_HMM_PER_FRAME)

  def transcribe(self, audio: np.ndarray, sample_rate: int) -> str:
    """The recognised words of a mono float waveform in [-1, 1] (normalised text)."""
    import librosa  # pylint: disable=g-import-not-at-top
    audio = np.asarray(audio, np.float32)
    if sample_rate != RECOGNISER_RATE:
      audio = librosa.resample(audio, orig_sr=sample_rate, target_sr=RECOGNISER_RATE)
    audio = audio + DITHER * np.random.default_rng(0).standard_normal(audio.shape[0])
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    # The front end adapts (its cepstral mean) across utterances: without a reset a transcript
    # would depend on what was recognised before it (the recordings' WER on the samples').
    self._decoder.reinit_feat()
    self._decoder.start_utt()
    self._decoder.process_raw(pcm, full_utt=True)
    self._decoder.end_utt()
    hyp = self._decoder.hyp()
    return normalise(hyp.hypstr) if hyp is not None else ""


def utterance_audio(audio: np.ndarray, start_frame: int, end_frame: int, hop: int,
                    sample_rate: int) -> np.ndarray:
  """The samples of an utterance's [start, end) mel-frame span, with PAD_S either side."""
  pad = int(PAD_S * sample_rate)
  return audio[max(0, start_frame * hop - pad):min(audio.shape[0], end_frame * hop + pad)]


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
  """Corpus WER (total word edits / total reference words) of normalised texts."""
  import jiwer  # pylint: disable=g-import-not-at-top  (optional dependency)
  refs = [normalise(r) for r in references]
  if not refs or not any(refs):
    raise ValueError("no reference words to score")
  keep = [i for i, r in enumerate(refs) if r]
  hyps = [normalise(hypotheses[i]) for i in keep]
  return float(jiwer.wer([refs[i] for i in keep], hyps))
