"""Thin ctypes wrapper over eSpeak NG: speech with word/phoneme timings, and IPA phonemes.

The shared library and its voice data come from the `espeakng-loader` wheel (GPL-3.0, an
optional `demo` dependency); a system `libespeak-ng` is used only when that wheel is missing.
Only the demo-corpus generator and the text front end load this module at run time.

eSpeak NG keeps all its state in globals (current voice, parameters, the synthesis callback),
so every call here holds one module lock, and the library is initialised once per process.
"""

import ctypes
import ctypes.util
import re
import threading
from typing import Any

import numpy as np

SAMPLE_RATE = 22050  # what espeak_Initialize returns for every bundled voice.

# espeak_AUDIO_OUTPUT: synchronous retrieval through the callback, no sound device.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# espeak_Initialize option bits.
_INIT_PHONEME_EVENTS = 0x0001
_INIT_DONT_EXIT = 0x8000  # return an error instead of calling exit() on a bad data path.
# espeak_PARAMETER ids.
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7
# espeak_Synth flags / TextToPhonemes modes.
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PHONEMES_IPA = 0x02

EVENT_TYPES = {0: "list_terminated", 1: "word", 2: "sentence", 3: "mark", 4: "play",
               5: "end", 6: "msg_terminated", 7: "phoneme", 8: "samplerate"}


class _EventId(ctypes.Union):
  _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p),
              ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
  """espeak_EVENT from speak_lib.h."""
  _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
              ("text_position", ctypes.c_int), ("length", ctypes.c_int),
              ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
              ("user_data", ctypes.c_void_p), ("id", _EventId)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                             ctypes.POINTER(_Event))

_LOCK = threading.RLock()
_STATE: dict[str, Any] = {}  # lib, callback (kept alive), chunks, events, source.


class EspeakError(RuntimeError):
  """Raised when the eSpeak NG library cannot be loaded or a call fails."""


def _locate_library() -> tuple[str, str | None, str]:
  """Returns (library path, data path or None for the built-in default, source)."""
  try:
    import espeakng_loader  # pylint: disable=g-import-not-at-top
  except ImportError:
    espeakng_loader = None
  if espeakng_loader is not None:
    return (espeakng_loader.get_library_path(), espeakng_loader.get_data_path(),
            "espeakng-loader")
  system = ctypes.util.find_library("espeak-ng")
  if system is None:
    raise EspeakError("eSpeak NG not found: `pip install espeakng-loader` (the `demo` extra) "
                      "or install a system libespeak-ng")
  return system, None, "system"


def _init() -> ctypes.CDLL:
  """Loads and initialises the library once per process (caller holds the lock)."""
  if "lib" in _STATE:
    return _STATE["lib"]
  lib_path, data_path, source = _locate_library()
  try:
    lib = ctypes.CDLL(lib_path)
  except OSError as e:
    raise EspeakError(f"cannot load eSpeak NG library {lib_path}: {e}") from e
  lib.espeak_Initialize.restype = ctypes.c_int
  lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
  lib.espeak_SetVoiceByName.restype = ctypes.c_int
  lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
  lib.espeak_SetParameter.restype = ctypes.c_int
  lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
  lib.espeak_SetSynthCallback.restype = None
  lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
  lib.espeak_Synth.restype = ctypes.c_int
  lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                               ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_uint),
                               ctypes.c_void_p]
  lib.espeak_Synchronize.restype = ctypes.c_int
  if hasattr(lib, "espeak_ng_SetRandSeed"):  # eSpeak NG >= 1.51 only.
    lib.espeak_ng_SetRandSeed.restype = None
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
  lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
  lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                                        ctypes.c_int]
  path_arg = data_path.encode() if data_path else None
  rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, path_arg,
                               _INIT_PHONEME_EVENTS | _INIT_DONT_EXIT)
  if rate != SAMPLE_RATE:
    raise EspeakError(f"espeak_Initialize({lib_path}, data {data_path}) returned {rate}, "
                      f"expected the sample rate {SAMPLE_RATE}")

  def on_synth(wav, num_samples, events):
    # Called from inside espeak_Synth on this thread; copy out before the buffer is reused.
    if num_samples > 0 and wav:
      _STATE["chunks"].append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    i = 0
    while events[i].type != 0:
      ev = events[i]
      _STATE["events"].append((ev.type, ev.audio_position, ev.text_position, ev.length,
                               bytes(ev.id.string).split(b"\0", 1)[0]))
      i += 1
    return 0  # 0 = continue synthesis.

  callback = _CALLBACK(on_synth)
  lib.espeak_SetSynthCallback(callback)
  _STATE.update(lib=lib, callback=callback, chunks=[], events=[], source=source,
                voice=None)
  return lib


def library_source() -> str:
  """Returns "espeakng-loader" or "system": where the loaded library came from."""
  with _LOCK:
    _init()
    return _STATE["source"]


def _set_voice(lib: ctypes.CDLL, voice: str) -> None:
  if _STATE.get("voice") == voice:
    return
  err = lib.espeak_SetVoiceByName(voice.encode())
  if err != 0:
    _STATE["voice"] = None  # unknown what eSpeak kept; force a reset next time.
    raise EspeakError(f"unknown eSpeak NG voice {voice!r} (error {err})")
  _STATE["voice"] = voice


def _set_param(lib: ctypes.CDLL, param: int, value: int, name: str) -> None:
  err = lib.espeak_SetParameter(param, int(value), 0)
  if err != 0:
    raise EspeakError(f"espeak_SetParameter({name}={value}) failed with error {err}")


def synthesize(text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50,
               pitch_range: int = 50, word_gap: int = 0,
               volume: int = 100, seed: int = 0) -> tuple[np.ndarray, list[dict[str, Any]]]:
  """Speaks `text` with eSpeak NG.

  Args:
    text: UTF-8 text (plain, no SSML).
    voice: eSpeak voice name, optionally with a variant (`en-us`, `en`, `en-us+f3`, ...).
    rate: words per minute (80..450).
    pitch: base pitch 0..100.
    pitch_range: intonation range 0..100 (0 = monotone).
    word_gap: extra pause between words in units of 10 ms.
    volume: amplitude 0..200.
    seed: eSpeak's internal random seed (noisy voice variants draw from it), reset before
      every call. Caveat: eSpeak's pitch-flutter phase is a static variable inside the
      library that no API resets, so the output also depends on what this process spoke
      before (a few samples of length, 1 ms in event times). For bit-exact reproducibility
      speak the same sequence of calls in a fresh process (data_prep.demo does).

  Returns:
    (audio, events): int16 mono audio at 22,050 Hz, and the events in time order, each a dict
    {"type": "word" | "phoneme" | "sentence" | "end" | ..., "time_s": float,
    "text_position": int (1-based character offset in `text`), "length": int (characters, for
    words), "text": text[text_position - 1:][:length] (word events; eSpeak voices some
    function words together with a neighbour and then reports one event whose position can
    be a few characters off, e.g. "a while"), "phoneme": eSpeak mnemonic such as "'eI" (phoneme
    events; a leading ' marks primary stress, ',' secondary)}.
  """
  if not isinstance(text, str) or not text.strip():
    raise ValueError(f"synthesize: text must be a non-empty string, got {text!r}")
  data = text.encode("utf-8") + b"\0"
  with _LOCK:
    lib = _init()
    _set_voice(lib, voice)
    # Setting a voice resets parameters, so set them every call.
    _set_param(lib, _PARAM_RATE, rate, "rate")
    _set_param(lib, _PARAM_PITCH, pitch, "pitch")
    _set_param(lib, _PARAM_RANGE, pitch_range, "pitch_range")
    _set_param(lib, _PARAM_WORDGAP, word_gap, "word_gap")
    _set_param(lib, _PARAM_VOLUME, volume, "volume")
    _STATE["chunks"], _STATE["events"] = [], []
    if hasattr(lib, "espeak_ng_SetRandSeed"):
      lib.espeak_ng_SetRandSeed(int(seed))
    buf = ctypes.create_string_buffer(data)
    err = lib.espeak_Synth(buf, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if err != 0:
      raise EspeakError(f"espeak_Synth failed with error {err} for text {text[:60]!r}")
    lib.espeak_Synchronize()
    chunks, raw_events = _STATE["chunks"], _STATE["events"]
    _STATE["chunks"], _STATE["events"] = [], []
  audio = (np.concatenate(chunks).astype(np.int16) if chunks
           else np.zeros((0,), np.int16))
  # text_position counts characters of the decoded input (1-based).
  events = []
  for etype, pos_ms, text_pos, length, ident in raw_events:
    ev = {"type": EVENT_TYPES.get(etype, str(etype)), "time_s": pos_ms / 1000.0,
          "text_position": text_pos, "length": length}
    if etype == 1:
      ev["text"] = text[max(text_pos - 1, 0):max(text_pos - 1, 0) + length]
    elif etype == 7:
      ev["phoneme"] = ident.decode("utf-8", "replace")
    events.append(ev)
  events.sort(key=lambda e: e["time_s"])  # stable: keeps eSpeak's order within equal times.
  return audio, events


# Punctuation kept by Matcha-TTS's phonemizer call (preserve_punctuation=True).
_PUNCT_RE = re.compile(r'(\s*[;:,.!?¡¿—…"«»“”]+\s*)')
_LANG_FLAG_RE = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)?\)")


def _phonemize_chunk(lib: ctypes.CDLL, chunk: str) -> str:
  """IPA of punctuation-free text; eSpeak returns one clause per call."""
  buf = ctypes.create_string_buffer(chunk.encode("utf-8") + b"\0")
  ptr = ctypes.c_void_p(ctypes.addressof(buf))
  parts = []
  while ptr.value:
    out = lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, _PHONEMES_IPA)
    if out:
      parts.append(out.decode("utf-8", "replace").strip())
  text = " ".join(p for p in parts if p)
  # Like phonemizer's language_switch="remove-flags": drop "(fr)" style switch markers.
  return _LANG_FLAG_RE.sub("", text).strip()


def phonemize(text: str, voice: str = "en-us", preserve_punctuation: bool = True) -> str:
  """Converts text to IPA with stress marks (ˈ primary, ˌ secondary), words space-separated.

  Mirrors Matcha-TTS's espeak call (phonemizer EspeakBackend, with_stress=True,
  language_switch="remove-flags"): with `preserve_punctuation` the marks
  `;:,.!?¡¿—…"«»“”` are kept in place (eSpeak itself drops them).

  Args:
    text: UTF-8 text.
    voice: eSpeak voice / language name.
    preserve_punctuation: keep punctuation marks in the output.

  Returns:
    The IPA string, e.g. "həlˈoʊ, wˈɜːld." for "Hello, world.".
  """
  if not isinstance(text, str):
    raise TypeError(f"phonemize: text must be str, got {type(text).__name__}")
  pieces = _PUNCT_RE.split(text) if preserve_punctuation else [text]
  out = []
  with _LOCK:
    lib = _init()
    _set_voice(lib, voice)
    for i, piece in enumerate(pieces):
      if i % 2 == 1:  # a punctuation run (split keeps the captured separators at odd indices).
        # Keep the spacing on both sides: 'it "true"' must not become 'ɪt"tɹˈuː"'.
        out.append((" " if piece[:1].isspace() else "") + piece.strip()
                   + (" " if piece[-1:].isspace() else ""))
      elif piece.strip():
        ph = _phonemize_chunk(lib, piece)
        if out and not out[-1].endswith(" ") and piece[:1].isspace():
          out.append(" ")
        out.append(ph)
  return re.sub(r"\s+", " ", "".join(out)).strip()
