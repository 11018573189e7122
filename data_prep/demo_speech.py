"""The demo corpus's speech: voices, turn-taking conversations and the 48 kHz stereo mix.

The actor speaks with one fixed eSpeak NG voice, each participant with their own; a
conversation alternates turns of random sentences (data_prep/demo_sentences.py). Each
utterance's eSpeak events become absolute phones and words (`utterance_timeline`), which
drive the motion (data_prep/demo_motion.py) and the tokens (data_prep/demo_tokens.py).
"""

import dataclasses
import re

import numpy as np

from avflow_jax.core import constants as C
from data_prep import demo_motion as motion
from data_prep import demo_sentences
from data_prep import demo_tokens as tokens_lib

AUDIO_SR = 48000
SAMPLES_PER_FRAME = AUDIO_SR // motion.VIDEO_FPS  # 1600
ACTOR_VOICE = {"voice": "en-us", "rate": 168, "pitch": 42, "pitch_range": 60}
PARTICIPANT_VOICES = ("en-us+f2", "en+m3", "en-gb-x-rp+f4", "en-us+m1", "en-gb-scotland+f3",
                      "en-029+m7", "en-us-nyc+f1", "en+klatt4", "en-gb-x-gbclan+m2", "en+f5")
_WORD_RE = re.compile(r"[A-Za-z']+")


@dataclasses.dataclass(frozen=True)
class Voice:
  """An eSpeak NG voice and its rate, pitch and pitch range (0-100)."""
  voice: str
  rate: int
  pitch: int
  pitch_range: int


@dataclasses.dataclass
class Utterance:
  """One synthesised sentence placed in a segment, with its eSpeak events."""
  speaker: str  # "actor" | "participant"
  start: float  # seconds in the segment
  text: str
  audio: np.ndarray  # int16 at 22,050 Hz
  events: list


def participant_voice(seed: int, participant: int) -> Voice:
  """The voice of participant `participant` (deterministic in seed and participant)."""
  rng = np.random.default_rng([seed, 2, participant])
  return Voice(voice=PARTICIPANT_VOICES[participant % len(PARTICIPANT_VOICES)],
               rate=int(rng.integers(150, 200)), pitch=int(rng.integers(30, 76)),
               pitch_range=int(rng.integers(40, 81)))


def _speak(rng: np.random.Generator, voice: Voice, text: str):
  from avflow_jax.text import espeak  # pylint: disable=g-import-not-at-top  # optional dep.
  return espeak.synthesize(
      text, voice=voice.voice, rate=int(voice.rate * rng.uniform(0.9, 1.1)),
      pitch=int(np.clip(voice.pitch + rng.integers(-6, 7), 0, 100)),
      pitch_range=int(np.clip(voice.pitch_range + rng.integers(-10, 11), 0, 100)))


def build_conversation(rng: np.random.Generator, duration: float, actor: Voice,
                       participant: Voice) -> list[Utterance]:
  """Turn-taking: 1-3 sentences per actor turn, 1-2 per participant turn, short pauses."""
  sentences = demo_sentences.SENTENCES
  utts, t = [], rng.uniform(0.3, 1.0)
  speaker = "actor" if rng.random() < 0.6 else "participant"
  max_turn = max(4.0, 0.45 * duration)  # short segments still hear both people.
  while True:
    voice = actor if speaker == "actor" else participant
    n_sent = int(rng.integers(1, 4 if speaker == "actor" else 3))
    placed = attempts = 0
    turn_start = t
    while placed < n_sent and attempts < n_sent + 6:
      attempts += 1
      text = sentences[int(rng.integers(len(sentences)))]
      audio, events = _speak(rng, voice, text)
      end = t + audio.size / C.SAMPLE_RATE
      if placed and end - turn_start > max_turn:
        break  # the turn is long enough; let the other person talk.
      if end > duration - 0.1:
        continue  # does not fit: try another (shorter) sentence.
      utts.append(Utterance(speaker, t, text, audio, events))
      t += audio.size / C.SAMPLE_RATE + rng.uniform(0.05, 0.3)
      placed += 1
    if placed == 0:
      return utts
    t += rng.uniform(0.2, 1.0)
    speaker = "participant" if speaker == "actor" else "actor"


def utterance_timeline(utt: Utterance) -> tuple[list, list, tuple[float, float]]:
  """Absolute phones and words of one utterance, and its speech span (start, end)."""
  end_of_audio = utt.start + utt.audio.size / C.SAMPLE_RATE
  ph_events = [e for e in utt.events if e["type"] == "phoneme"]
  word_events = [e for e in utt.events if e["type"] == "word"]
  phones, per_pos = [], {}
  for k, e in enumerate(ph_events):
    start = utt.start + e["time_s"]
    end = utt.start + ph_events[k + 1]["time_s"] if k + 1 < len(ph_events) else end_of_audio
    name, stress = motion.split_stress(e["phoneme"])
    phone = motion.Phone(start, max(end, start), name, stress)
    phones.append(phone)
    if not motion.is_pause(name):
      per_pos.setdefault(e["text_position"], []).append((phone.start, phone.end, e["phoneme"]))
  spoken = [p for p in phones if not motion.is_pause(p.name)]
  span = (spoken[0].start, spoken[-1].end) if spoken else (utt.start, utt.start)
  # Text words -> eSpeak word events: a word belongs to the last event whose (1-based)
  # text_position is at or before the word's first character; eSpeak may merge words.
  text_words = [(m.start(), m.group()) for m in _WORD_RE.finditer(utt.text)]
  event_pos = [w["text_position"] - 1 for w in word_events]
  groups = [[] for _ in word_events]
  for offset, word in text_words:
    k = max(0, int(np.searchsorted(event_pos, offset, side="right")) - 1)
    if groups:
      groups[k].append(word)
  words = []
  for k, w in enumerate(word_events):
    w_start = utt.start + w["time_s"]
    w_end = (utt.start + word_events[k + 1]["time_s"] if k + 1 < len(word_events) else span[1])
    if groups[k]:
      words.append(tokens_lib.Word(tuple(groups[k]), w_start, max(w_end, w_start),
                                   tuple(per_pos.get(w["text_position"], ()))))
  return phones, words, span


def _mix_channel(utts: list, speaker: str, num_samples: int,
                 rng: np.random.Generator) -> np.ndarray:
  track = np.zeros(num_samples, np.float64)
  for u in utts:
    if u.speaker != speaker:
      continue
    i0 = int(round(u.start * C.SAMPLE_RATE))
    n = min(u.audio.size, num_samples - i0)
    track[i0:i0 + n] += u.audio[:n]
  # A faint noise floor (about -80 dBFS) so silences are not digital zeros.
  return track + 3.0 * rng.standard_normal(num_samples)


def stereo_48k(utts: list, num_frames: int, rng: np.random.Generator) -> np.ndarray:
  """(num_frames * 1600, 2) int16: both speakers at 22,050 Hz, resampled with soxr."""
  import soxr  # pylint: disable=g-import-not-at-top
  n22 = num_frames * (C.SAMPLE_RATE // motion.VIDEO_FPS)  # 735 samples per frame
  tracks = np.stack([_mix_channel(utts, "actor", n22, rng),
                     _mix_channel(utts, "participant", n22, rng)], -1)
  y = soxr.resample(tracks.astype(np.float32) / 32768.0, C.SAMPLE_RATE, AUDIO_SR,
                    quality="HQ")
  n48 = num_frames * SAMPLES_PER_FRAME
  y = np.pad(y, ((0, max(0, n48 - y.shape[0])), (0, 0)))[:n48]
  return np.clip(np.round(y * 32768.0), -32768, 32767).astype(np.int16)
