"""Text -> IPA phonemes (eSpeak NG) -> symbol ids, as Matcha-TTS's `english_cleaners2`.

The pipeline is `clean_text` (ASCII, lowercase, numbers, abbreviations), eSpeak NG with stress
marks and punctuation kept (`avflow_jax.espeak.phonemize`, voice en-us), removal of brackets,
whitespace collapse, then the 178-symbol ids with a blank (id 0) around every symbol.
"""

import functools
import re

from absl import logging
import numpy as np

from avflow_jax.text import cleaners
from avflow_jax.text import symbols

DEFAULT_VOICE = "en-us"


def _phonemize(text: str, voice: str) -> str:
  # Imported lazily: eSpeak NG is an optional (GPL) dependency needed only here.
  from avflow_jax.text import espeak  # pylint: disable=g-import-not-at-top
  return espeak.phonemize(text, voice=voice)


@functools.lru_cache(maxsize=65536)
def text_to_phonemes(text: str, voice: str = DEFAULT_VOICE) -> str:
  """Cleans `text` and converts it to IPA with stress marks and punctuation.

  Args:
    text: raw English text.
    voice: eSpeak NG voice.

  Returns:
    IPA string, e.g. "həlˈoʊ, wˈɜːld." for "Hello, world."
  """
  cleaned = cleaners.clean_text(text)
  if not cleaned:
    return ""
  ipa = _phonemize(cleaned, voice)
  ipa = re.sub(r"[()\[\]{}]", "", ipa)  # what is left of eSpeak's language-switch flags.
  return cleaners.collapse_whitespace(ipa)


def symbols_to_ids(phonemes: str) -> np.ndarray:
  """Maps each character to its symbol id; unknown characters are dropped with a warning.

  Args:
    phonemes: string over `symbols.SYMBOLS`.

  Returns:
    int32 ids, one per known character.
  """
  ids, unknown = [], []
  for ch in phonemes:
    idx = symbols.SYMBOL_TO_ID.get(ch)
    if idx is None:
      unknown.append(ch)
    else:
      ids.append(idx)
  if unknown:
    logging.warning("text front end: dropped %d unknown symbol(s) %s from %r",
                    len(unknown), sorted(set(unknown)), phonemes)
  return np.asarray(ids, dtype=np.int32)


def intersperse(ids: np.ndarray, blank: int = symbols.PAD_ID) -> np.ndarray:
  """[a, b] -> [blank, a, blank, b, blank] (length 2n + 1)."""
  out = np.full((2 * len(ids) + 1,), blank, dtype=np.int32)
  out[1::2] = ids
  return out


def text_to_ids(text: str, add_blank: bool = True, voice: str = DEFAULT_VOICE) -> np.ndarray:
  """Converts raw text to model input ids.

  Args:
    text: raw English text.
    add_blank: intersperse the blank id 0 (Matcha-TTS trains with it).
    voice: eSpeak NG voice.

  Returns:
    int32 array of symbol ids; empty text gives [] (or [0] with `add_blank`).
  """
  ids = symbols_to_ids(text_to_phonemes(text, voice))
  return intersperse(ids) if add_blank else ids


def ids_to_text(ids) -> str:
  """Inverse of `symbols_to_ids` (blanks removed), for logs and debugging."""
  return "".join(symbols.SYMBOLS[int(i)] for i in np.asarray(ids).reshape(-1)
                 if int(i) != symbols.PAD_ID)
