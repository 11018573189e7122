"""WER with PocketSphinx + jiwer: text normalisation, corpus WER, and the recogniser on speech."""

import numpy as np
import pytest

from avflow_jax.core import constants as C
from avflow_jax.evaluation import speech_recognition as sr


def test_normalise_spells_numbers_and_drops_punctuation():
  assert sr.normalise("Two friends met 3 bears, didn't they?") == (
      "two friends met three bears didn't they")
  assert sr.normalise("  ") == ""


def test_corpus_wer_counts_edits_over_all_reference_words():
  refs = ["the cat sat", "a dog"]
  # One substitution (cat -> hat) and one deletion (dog): 2 edits / 5 words.
  assert sr.word_error_rate(refs, ["the hat sat", "a"]) == pytest.approx(0.4)
  assert sr.word_error_rate(refs, refs) == 0.0
  assert sr.word_error_rate(refs, ["", ""]) == 1.0  # Nothing recognised: every word missed.
  with pytest.raises(ValueError, match="no reference words"):
    sr.word_error_rate(["!"], ["x"])


def test_utterance_audio_pads_the_span_inside_the_clip():
  audio = np.arange(100 * C.HOP_LENGTH, dtype=np.float32)
  pad = int(sr.PAD_S * C.SAMPLE_RATE)
  cut = sr.utterance_audio(audio, 30, 40, C.HOP_LENGTH, C.SAMPLE_RATE)
  assert cut[0] == 30 * C.HOP_LENGTH - pad and cut.shape[0] == 10 * C.HOP_LENGTH + 2 * pad
  assert sr.utterance_audio(audio, 0, 5, C.HOP_LENGTH, C.SAMPLE_RATE)[0] == 0


def test_missing_extra_is_named(monkeypatch):
  import builtins  # pylint: disable=g-import-not-at-top
  real = builtins.__import__

  def no_sphinx(name, *a, **kw):
    if name == "pocketsphinx":
      raise ImportError(name)
    return real(name, *a, **kw)

  monkeypatch.setattr(builtins, "__import__", no_sphinx)
  reason = sr.unavailable_reason()
  assert "pocketsphinx" in reason and "avflow_jax[wer]" in reason
  with pytest.raises(ImportError, match="wer"):
    sr.Recognizer()


def test_recogniser_understands_espeak_and_not_noise():
  pytest.importorskip("pocketsphinx")
  from avflow_jax.text import espeak  # pylint: disable=g-import-not-at-top
  text = "Please remember to bring your umbrella tomorrow."
  speech, _ = espeak.synthesize(text)
  rec = sr.Recognizer()
  hyp = rec.transcribe(speech.astype(np.float32) / 32768.0, C.SAMPLE_RATE)
  assert sr.word_error_rate([text], [hyp]) <= 0.5, hyp
  noise = np.random.default_rng(0).normal(size=speech.shape[0]).astype(np.float32) * 0.1
  assert sr.word_error_rate([text], [rec.transcribe(noise, C.SAMPLE_RATE)]) >= 0.8


def test_a_transcript_does_not_depend_on_the_utterances_before_it():
  pytest.importorskip("pocketsphinx")
  from avflow_jax.text import espeak  # pylint: disable=g-import-not-at-top
  texts = ["Wait, you mean the bedroom or the small one?",
           "Every morning the milkman came by the house.",
           "Did you manage to book the tickets in the end?", "We talked for hours about books.",
           "Look for hours about books you are the console.",
           "And she comes to what the money is working."]
  speech = [espeak.synthesize(t)[0].astype(np.float32) / 32768.0 for t in texts]
  rec = sr.Recognizer()
  forward = [rec.transcribe(s, C.SAMPLE_RATE) for s in speech]
  # Without the front end's reset, two of these six came out otherwise in the other order.
  assert [rec.transcribe(s, C.SAMPLE_RATE) for s in speech[::-1]][::-1] == forward
