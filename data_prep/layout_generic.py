"""The generic layout (ours): <clip>.wav + optional face/head/missing/tokens/txt files.

docs/data_prep.md describes it: layout.json (fps, head_dim), splits.json or --val-fraction,
a dataset with face files for every clip or for none (audio-only).
"""

import glob
import json
import math
import os

import numpy as np

from avflow_jax.core import align
from avflow_jax.core import audio as audio_lib
from avflow_jax.core import constants as C
from avflow_jax.core.errors import BadInput
from avflow_jax.core.errors import FatalError
from data_prep import headpose
from data_prep import source_files
from data_prep import splits
from data_prep.source_types import ClipSpec
from data_prep.source_types import DatasetPlan
from data_prep.source_types import RawClip

GENERIC_HEAD_KINDS = {7: "quat_trans", 4: "a2p_4d"}


def _read_layout(root: str) -> dict:
  path = os.path.join(root, "layout.json")
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      layout = json.load(f)
  except (OSError, ValueError) as e:
    raise FatalError(f"{path}: unreadable ({e})") from e
  if not isinstance(layout, dict):
    raise FatalError(f"{path}: expected a JSON object")
  if "fps" in layout:
    fps = layout["fps"]
    # bool is an int to Python; NaN and inf are valid JSON to json.load.
    if (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps)
        or fps <= 0):
      raise FatalError(f"{path}: field 'fps' is {fps!r}, expected a positive number of frames "
                       "per second")
  if "head_dim" in layout:
    dim = layout["head_dim"]
    if isinstance(dim, bool) or not isinstance(dim, int) or dim not in GENERIC_HEAD_KINDS:
      raise FatalError(f"{path}: field 'head_dim' is {dim!r}, expected 7 or 4")
  return layout


def _generic_head_dim(path: str) -> int:
  try:
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
  except Exception as e:  # pylint: disable=broad-except
    raise FatalError(f"{path}: unreadable head file ({e})") from e
  if arr.ndim == 3:
    return 7  # Rigid transforms become [q, t].
  if arr.ndim == 2 and arr.shape[1] in GENERIC_HEAD_KINDS:
    return arr.shape[1]
  raise FatalError(f"{path}: head shape {arr.shape}, expected (N, 7), (N, 4) or (N, 3|4, 4)")


def plan_generic(root: str, args) -> DatasetPlan:
  """Lists <root>/<clip>.wav clips; fixes fps and head dim (layout.json or the files).

  Raises:
    FatalError: no clip, a bad layout.json or head file, face files without heads.
  """
  layout = _read_layout(root)
  fps = float(layout.get("fps", C.VIDEO_FPS))
  names = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(root, "*.wav")))
  if not names:
    raise FatalError(f"{root}: no <clip>.wav files (generic layout)")
  face = any(os.path.exists(os.path.join(root, n + ".face.npy")) for n in names)
  head_dim = 0
  if face:
    heads = [os.path.join(root, n + ".head.npy") for n in names
             if os.path.exists(os.path.join(root, n + ".head.npy"))]
    if not heads:
      raise FatalError(f"{root}: face files but no <clip>.head.npy")
    head_dim = int(layout.get("head_dim", 0)) or _generic_head_dim(heads[0])
  clip_splits, excluded = splits.split_names(root, names, args)
  clips = []
  for n in names:
    if n not in clip_splits:
      continue
    base = os.path.join(root, n)
    files = {"audio": base + ".wav"}
    if face:
      files.update(face=base + ".face.npy", head=base + ".head.npy")
      source_files.optional(files, "missing", base + ".missing.npy")
    source_files.optional(files, "tokens", base + ".tokens.npy")
    source_files.optional(files, "text", base + ".txt")
    clips.append(ClipSpec(n, clip_splits[n], files))
  notes = [f"{len(excluded)} clip(s) not listed in splits.json: {excluded[:5]}"] if excluded else []
  return DatasetPlan("generic", clips, [], face=face, head_dim=head_dim,
                     head_kind=GENERIC_HEAD_KINDS.get(head_dim), participant=False,
                     options={"fps": fps, "head_dim": head_dim}, notes=notes)


def _read_text(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return " ".join(f.read().split())
  except (OSError, UnicodeDecodeError) as e:
    raise BadInput(f"{path}: unreadable transcript ({e})", "bad transcript") from e


def load_generic(spec: ClipSpec, options: dict) -> RawClip:
  """Reads one clip: channel 0 of the wav and whichever optional streams it has."""
  f = spec.files
  fps = options["fps"]
  audio, sr = audio_lib.read_wav(f["audio"], channels=tuple(range(1, 65)))
  seconds = audio.shape[0] / sr
  raw = RawClip(spec.name, audio[:, 0], sr)
  if "face" in f:
    face = source_files.load_array(f["face"], ndim=2, last=C.FACE_DIM)
    align.check_duration(f["face"], face.shape[0], fps, seconds)
    head = source_files.load_array(f["head"])
    if head.ndim == 3:
      head = headpose.transforms_to_head(head, f["head"])
    elif head.ndim != 2 or head.shape[1] != options["head_dim"]:
      raise BadInput(f"{f['head']}: shape {head.shape}, expected (N, {options['head_dim']})",
                     "wrong dims")
    if head.shape[1] != options["head_dim"]:
      raise BadInput(f"{f['head']}: {head.shape[1]}-d head, the dataset's is "
                     f"{options['head_dim']}-d", "wrong dims")
    align.check_duration(f["head"], head.shape[0], fps, seconds)
    observed = source_files.observed_from_missing(f.get("missing"), face.shape[0])
    source_files.check_face(face, observed, f.get("missing", f["face"]))
    raw.face, raw.face_observed, raw.face_rate = face, observed, fps
    raw.head, raw.head_rate, raw.head_is_quat = head.astype(np.float64), fps, head.shape[1] == 7
  if "tokens" in f:
    tok = source_files.load_array(f["tokens"])
    if tok.ndim == 3 and tok.shape[0] == 2:
      tok = tok[0]
    if tok.ndim != 2 or tok.shape[1] != C.TOKEN_DIM:
      raise BadInput(f"{f['tokens']}: shape {tok.shape}, expected (N_tok, 29) or "
                     "(2, N_tok, 29)", "wrong dims")
    align.check_token_count(f["tokens"], tok.shape[0], seconds)
    raw.tokens, raw.token_rate = tok.astype(np.float32), align.stretched_rate(tok.shape[0],
                                                                              seconds)
  if "text" in f:
    raw.text = _read_text(f["text"])
    raw.utterances = [(raw.text, 0.0, seconds)]
  return raw
