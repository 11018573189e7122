"""Tests for the eSpeak NG ctypes wrapper."""

import threading

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

from avflow_jax.text import espeak  # pylint: disable=g-import-not-at-top


def test_phonemize_fixed_sentence():
  assert espeak.phonemize("Hello, world.") == "həlˈoʊ, wˈɜːld."
  assert espeak.phonemize("Hello, world.", preserve_punctuation=False) == "həlˈoʊ wˈɜːld"


def test_phonemize_stress_and_words():
  out = espeak.phonemize("The quick brown fox jumps over the lazy dog")
  assert out == "ðə kwˈɪk bɹˈaʊn fˈɑːks dʒˈʌmps ˌoʊvɚ ðə lˈeɪzi dˈɑːɡ"
  assert len(out.split(" ")) == 9


def test_phonemize_keeps_question_and_quotes():
  out = espeak.phonemize('"Really?" she asked.')
  assert out.startswith('"ɹ') and out.endswith("ˈæskt.")
  assert '?"' in out


def test_phonemize_keeps_the_space_before_an_opening_quote():
  # The words either side of a mark stay separate words: 'it "true"' is not 'ɪt"tɹˈuː"'.
  assert espeak.phonemize('is it "true"?') == 'ɪz ɪt "tɹˈuː"?'
  assert espeak.phonemize("x — y") == "ˈɛks — wˈaɪ"
  assert espeak.phonemize("Hello, world.") == "həlˈoʊ, wˈɜːld."


def test_synthesize_audio_and_events():
  audio, events = espeak.synthesize("Peter baked a bumpy pie for my mother.")
  assert audio.dtype == np.int16 and audio.ndim == 1
  assert 1.5 < audio.size / espeak.SAMPLE_RATE < 2.6
  assert audio.astype(np.float64).std() > 500  # actually speech, not silence.
  times = [e["time_s"] for e in events]
  assert times == sorted(times)
  phonemes = [e for e in events if e["type"] == "phoneme"]
  names = [e["phoneme"] for e in phonemes]
  assert names[0] == "p" and "b" in names and "m" in names
  assert any(n.startswith("'") for n in names)  # primary stress is marked.
  assert 0.0 < phonemes[0]["time_s"] < 0.2
  assert phonemes[-1]["time_s"] <= audio.size / espeak.SAMPLE_RATE + 1e-3
  words = [e["text"] for e in events if e["type"] == "word"]
  assert words == ["Peter", "baked", "a", "bumpy", "pie", "for", "my", "mother"]


def test_synthesize_rate_changes_duration_and_bad_voice_raises():
  slow, _ = espeak.synthesize("One two three four five.", rate=120)
  fast, _ = espeak.synthesize("One two three four five.", rate=300, voice="en+f3")
  assert slow.size > 1.8 * fast.size
  with pytest.raises(espeak.EspeakError, match="no-such-voice"):
    espeak.synthesize("Hello.", voice="no-such-voice")
  with pytest.raises(ValueError):
    espeak.synthesize("   ")


def test_threads_share_the_library_safely():
  results = {}

  def work(i):
    results[i] = espeak.phonemize("Hello, world.")

  threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert set(results.values()) == {"həlˈoʊ, wˈɜːld."}
