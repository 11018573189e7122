"""Checked reading of a source's files, shared by the layouts' loaders.

Every failure is a `BadInput` naming the file and the reason, so the clip is skipped with it.
"""

import os
from typing import Optional

import numpy as np

from avflow_jax.core import audio as audio_lib
from avflow_jax.core import constants as C
from avflow_jax.core.errors import BadInput

# audio2photoreal and avflow50h: token files under this folder, wavs at 48 kHz
# (docs/data_prep.md).
TOKEN_DIR = "wav2vec2_fairseq_base_ls960_asr_ls960_vad100"
A2P_AUDIO_RATE = 48000


def load_array(path: str, ndim: Optional[int] = None, last: Optional[int] = None,
               numeric: bool = True) -> np.ndarray:
  """np.load without pickle plus shape / finiteness checks; errors name the file."""
  if not os.path.exists(path):
    raise BadInput(f"{path}: file missing", "missing file")
  try:
    arr = np.load(path, allow_pickle=False)
  except Exception as e:  # Object arrays, bad headers, truncation.
    raise BadInput(f"{path}: unreadable npy ({e})", "unreadable array") from e
  if ndim is not None and arr.ndim != ndim:
    raise BadInput(f"{path}: shape {arr.shape}, expected {ndim} dims"
                   + (f" with last dim {last}" if last else ""), "wrong dims")
  if last is not None and arr.shape[-1] != last:
    raise BadInput(f"{path}: shape {arr.shape}, expected last dim {last}", "wrong dims")
  if numeric:
    if not np.issubdtype(arr.dtype, np.number):
      raise BadInput(f"{path}: dtype {arr.dtype} is not numeric", "wrong dims")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
      raise BadInput(f"{path}: NaN/Inf values", "NaN/Inf")
  return arr


def observed_from_missing(path: Optional[str], num: int) -> np.ndarray:
  """(num,) bool mask from an optional list of missing frame indices.

  Indices outside [0, num) are ignored (they name frames the clip does not have).
  """
  observed = np.ones(num, bool)
  if path is not None:
    idx = load_array(path).reshape(-1)
    if not np.issubdtype(idx.dtype, np.integer):
      if not np.all(idx == np.round(idx)):
        raise BadInput(f"{path}: missing-frame indices are not integers", "wrong dims")
      idx = idx.astype(np.int64)
    idx = idx[(idx >= 0) & (idx < num)]
    observed[idx] = False
  return observed


def check_face(face: np.ndarray, observed: np.ndarray, path: str) -> None:
  """Refuses a face stream whose frames are all missing (`path` names the file)."""
  if not observed.any():
    raise BadInput(f"{path}: all {face.shape[0]} face frames are missing",
                   "all face frames missing")


def token_channels(path: str) -> np.ndarray:
  """Loads a (2, N_tok, 29) token file (channel 0 actor, 1 participant)."""
  tok = load_array(path, ndim=3, last=C.TOKEN_DIM)
  if tok.shape[0] != 2:
    raise BadInput(f"{path}: shape {tok.shape}, expected (2, N_tok, 29)", "wrong dims")
  return tok.astype(np.float32)


def optional(files: dict, role: str, path: str) -> None:
  """Adds `path` under `role` when the file exists."""
  if os.path.exists(path):
    files[role] = path


def read_stereo(path: str, rate: Optional[int] = None) -> tuple[np.ndarray, int]:
  """A 2-channel wav; with `rate`, any other sample rate is refused (BadInput)."""
  audio, sr = audio_lib.read_wav(path, channels=(2,))
  # A layout documented at 48 kHz that delivers another rate is a wrong or badly converted
  # file (8 kHz telephone audio has nothing above 4 kHz, a third of the mel's bands).
  if rate is not None and sr != rate:
    raise BadInput(f"{path}: sample rate {sr} Hz, expected {rate}", "wrong sample rate")
  return audio, sr
