"""ASR-style character token logits for the demo corpus (stand-in for wav2vec2 CTC output).

A CTC model's logits are peaky: the blank '-' wins almost every frame, each character
spikes for about one frame near the sound that spells it, and '|' follows each word. This
module reproduces that from eSpeak's word and phoneme timings: the letters of a word are
aligned monotonically to its phonemes (a tiny DP that prefers letters whose spelling
matches the phoneme), spread over that phoneme's span, and emitted on the wav2vec2 frame
grid (16 kHz, window 400, hop 320: frame k is centred at (320 k + 200) / 16000 s).
"""

import dataclasses
from typing import Sequence

import numpy as np

from avflow_jax.core import constants as C

W2V_SR = 16000
W2V_WIN = 400
W2V_HOP = 320

# Logit levels (natural units of the CTC head); chosen so the mean/std land near the
# official token statistics (-2.85 / 4.53).
BLANK_LOGIT = C.SILENCE_BLANK_LOGIT
CHAR_LOGIT = 10.0
BLANK_UNDER_CHAR = 3.0
NEIGHBOUR_LOGIT = 2.0
SPACE_LOGIT = 8.5
OTHER_LOGIT_SILENCE = C.SILENCE_OTHER_LOGIT
OTHER_LOGIT_SPEECH = -3.5
NOISE_STD = 0.4

_LABEL_INDEX = {c: i for i, c in enumerate(C.TOKEN_LABELS)}
BLANK = _LABEL_INDEX["-"]
SPACE = _LABEL_INDEX["|"]
_VOWEL_LETTERS = set("AEIOUY")


@dataclasses.dataclass(frozen=True)
class Word:
  """Text words spoken under one eSpeak word event, in absolute segment time.

  eSpeak sometimes voices short function words together with a neighbour ("a while",
  "in the") and reports one word event for them, so an event may carry several words.
  `phones` are the event's phonemes as (start, end, mnemonic).
  """
  words: tuple[str, ...]
  start: float
  end: float
  phones: tuple[tuple[float, float, str], ...]


def num_token_frames(num_samples_16k: int) -> int:
  """wav2vec2's output length for a waveform of this many 16 kHz samples."""
  return max(0, (num_samples_16k - W2V_WIN) // W2V_HOP + 1)


def time_to_frame(t: float) -> int:
  return int(round((t * W2V_SR - W2V_WIN / 2) / W2V_HOP))


def letters_of(word: str) -> list[str]:
  return [c for c in word.upper() if c in _LABEL_INDEX and c not in "-|"]


def _match_cost(letter: str, phone: str) -> float:
  p = phone.lstrip("',").lower()
  if letter in _VOWEL_LETTERS:
    return 0.2 if p[:1] in set("aeiou03@v") else 1.0
  return 0.0 if p[:1] == letter.lower() else 1.0


def align_letters(letters: Sequence[str], phones: Sequence[str]) -> list[int]:
  """Monotonic letter -> phoneme assignment (non-decreasing indices) of least cost.

  Cost = spelling mismatch + 0.5 * |relative position difference|, so silent letters
  attach to a neighbour and the alignment stays close to proportional.
  """
  nl, npn = len(letters), len(phones)
  if npn == 0:
    return []
  cost = np.array([[_match_cost(l, p) + 0.5 * abs((i + 0.5) / nl - (j + 0.5) / npn)
                    for j, p in enumerate(phones)] for i, l in enumerate(letters)])
  acc = np.zeros_like(cost)
  back = np.zeros(cost.shape, np.int64)
  acc[0] = cost[0]
  for i in range(1, nl):
    # best predecessor with index <= j: running minimum over the previous row.
    best = np.minimum.accumulate(acc[i - 1])
    arg = np.zeros(npn, np.int64)
    for j in range(1, npn):
      arg[j] = arg[j - 1] if acc[i - 1][arg[j - 1]] <= acc[i - 1][j] else j
    acc[i] = cost[i] + best
    back[i] = arg
  path = [int(np.argmin(acc[-1]))]
  for i in range(nl - 1, 0, -1):
    path.append(int(back[i][path[-1]]))
  return path[::-1]


def emissions(word: Word) -> list[tuple[float, str]]:
  """(time, label) emissions of a word group: its letters, then "|" after each word."""
  letters, word_of = [], []
  for k, w in enumerate(word.words):
    ls = letters_of(w)
    letters += ls
    word_of += [k] * len(ls)
  if not letters:
    return []
  spoken = [p for p in word.phones if not p[2].startswith("_")]
  if spoken:
    assign = align_letters(letters, [p[2] for p in spoken])
    times = []
    for j, (s, e, _) in enumerate(spoken):
      mine = [i for i, a in enumerate(assign) if a == j]
      times += [s + (k + 0.5) / len(mine) * (e - s) for k in range(len(mine))]
  else:
    step = (word.end - word.start) / len(letters)
    times = [word.start + (k + 0.5) * step for k in range(len(letters))]
  out = []
  for i, (t, letter) in enumerate(zip(times, letters)):
    out.append((t, letter))
    if i + 1 == len(letters) or word_of[i + 1] != word_of[i]:
      out.append((t, "|"))  # emitted on the frame after the word's last letter.
  return out


def token_logits(words: Sequence[Word], speech_spans: Sequence[tuple[float, float]],
                 num_frames: int, rng: np.random.Generator) -> np.ndarray:
  """(num_frames, 29) float32 logits of one speaker.

  Args:
    words: the speaker's words in time order.
    speech_spans: (start, end) seconds of the speaker's utterances (other labels sit a
      little higher inside speech, as in real CTC output).
    num_frames: wav2vec2 frames of the segment.
    rng: noise source.
  """
  dim = len(C.TOKEN_LABELS)
  logits = np.full((num_frames, dim), OTHER_LOGIT_SILENCE)
  for s, e in speech_spans:
    logits[max(time_to_frame(s), 0):max(time_to_frame(e) + 1, 0)] = OTHER_LOGIT_SPEECH
  logits[:, BLANK] = BLANK_LOGIT
  used = np.zeros(num_frames, bool)
  last = {"frame": -10, "label": -1}

  def emit(frame: int, label: int, level: float, max_shift: int = 3) -> None:
    frame = max(frame, last["frame"] + 1)  # keep the order of the letters.
    if label == last["label"] and frame == last["frame"] + 1:
      frame += 1  # CTC needs a blank between repeated letters ("LL").
    for f in range(max(frame, 0), min(frame + max_shift + 1, num_frames)):
      if not used[f]:
        used[f] = True
        logits[f, label] = level
        logits[f, BLANK] = BLANK_UNDER_CHAR
        for g in (f - 1, f + 1):
          if 0 <= g < num_frames:
            logits[g, label] = max(logits[g, label], NEIGHBOUR_LOGIT)
        last.update(frame=f, label=label)
        return

  for word in words:
    for t, label in emissions(word):
      if label == "|":
        emit(last["frame"] + 1, SPACE, SPACE_LOGIT, max_shift=2)
      else:
        emit(time_to_frame(t), _LABEL_INDEX[label], CHAR_LOGIT)
  logits += NOISE_STD * rng.standard_normal(logits.shape)
  return logits.astype(np.float32)


def greedy_decode(logits: np.ndarray) -> str:
  """CTC greedy decoding (collapse repeats, drop blanks, '|' -> space); for checks."""
  best = np.argmax(logits, axis=-1)
  out, prev = [], -1
  for k in best:
    if k != prev and k != BLANK:
      out.append(" " if k == SPACE else C.TOKEN_LABELS[k])
    prev = k
  return " ".join("".join(out).split())
