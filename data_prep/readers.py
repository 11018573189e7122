"""Source layouts -> a list of clips (`plan`) and per-clip raw streams (`load_clip`).

Four layouts are understood: `audio2photoreal`, `avflow50h`, `generic` and `ljspeech`
(docs/data_prep.md describes them). `plan` runs once in the main process: it lists the
clips, assigns splits and fixes the dataset-wide options (dims, participant min/max).
`load_clip` runs in a worker: it reads one clip's files, checks them and returns the
streams at their native rates; `data_prep.clip.build_record` puts them on the mel grid.
"""

import csv
import dataclasses
import glob
import json
import math
import os
import re
from typing import Any, Optional, Sequence

import numpy as np

from avflow_jax.core import align
from avflow_jax.core import audio as audio_lib
from avflow_jax.core import constants as C
from avflow_jax.core.errors import BadInput
from avflow_jax.core.errors import FatalError
from data_prep import headpose

FORMATS = ("audio2photoreal", "avflow50h", "generic", "ljspeech")
TOKEN_DIR = "wav2vec2_fairseq_base_ls960_asr_ls960_vad100"
SMIRK_DIR = os.path.join("participant", "camera01", "smirk_outputs")
FACE_RIG = os.path.join("demo_rig", "face_rig.npz")
A2P_AUDIO_RATE = 48000  # audio2photoreal and avflow50h wavs (docs/data_prep.md).
_DATE = re.compile(r"^(\d{8})_")


@dataclasses.dataclass(frozen=True)
class ClipSpec:
  """One clip to prepare (picklable: it travels to the worker processes).

  Attributes:
    name: unique clip id.
    split: "train" or "val".
    files: role -> path; optional roles appear only when the file exists.
    extra: small per-clip values (e.g. the LJSpeech transcript).
  """
  name: str
  split: str
  files: dict
  extra: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DatasetPlan:
  """Everything `plan` decides before any clip is processed."""
  source_format: str
  clips: list
  skipped: list  # [(clip, reason, kind)] found while listing.
  face: bool
  head_dim: int
  head_kind: Optional[str]
  participant: bool
  options: dict  # dataset-wide loader options; part of every clip's cache key.
  face_rig: Optional[str] = None
  notes: list = dataclasses.field(default_factory=list)
  extra_manifest: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RawClip:
  """A clip's streams at their native rates, checked, before alignment.

  `tokens` / `participant_tokens` are None when the source has none: they are then computed
  from `audio` / `participant_audio` by the wav2vec2 port and stretched over the audio.
  """
  name: str
  audio: np.ndarray  # (N,) float32, the actor.
  sample_rate: int
  tokens: Optional[np.ndarray] = None  # (N_tok, 29)
  token_rate: Optional[float] = None
  face: Optional[np.ndarray] = None  # (N, 256), missing rows still raw.
  face_observed: Optional[np.ndarray] = None  # (N,) bool
  face_rate: float = C.VIDEO_FPS
  head: Optional[np.ndarray] = None  # (N, Dh)
  head_rate: float = C.VIDEO_FPS
  head_is_quat: bool = False
  participant_audio: Optional[np.ndarray] = None
  participant_tokens: Optional[np.ndarray] = None
  participant_token_rate: Optional[float] = None
  smirk: Optional[np.ndarray] = None  # (N, 58), already min-max normalised.
  smirk_rate: float = C.VIDEO_FPS
  text: Optional[str] = None
  utterances: Optional[list] = None  # [(text, start_s, end_s)]


# ----------------------------------------------------------------------------- helpers


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


def _check_face(face: np.ndarray, observed: np.ndarray, path: str) -> None:
  if not observed.any():
    raise BadInput(f"{path}: all {face.shape[0]} face frames are missing",
                   "all face frames missing")


def _token_channels(path: str) -> np.ndarray:
  """Loads a (2, N_tok, 29) token file (channel 0 actor, 1 participant)."""
  tok = load_array(path, ndim=3, last=C.TOKEN_DIM)
  if tok.shape[0] != 2:
    raise BadInput(f"{path}: shape {tok.shape}, expected (2, N_tok, 29)", "wrong dims")
  return tok.astype(np.float32)


def optional(files: dict, role: str, path: str) -> None:
  """Adds `path` under `role` when the file exists."""
  if os.path.exists(path):
    files[role] = path


def fraction_split(names: Sequence[str], val_fraction: float) -> dict:
  """Sorted names; the last ceil(fraction * n) go to val (none when fraction is 0)."""
  names = sorted(names)
  n_val = 0 if val_fraction <= 0 or len(names) < 2 else max(
      1, math.ceil(val_fraction * len(names)))
  n_val = min(n_val, len(names) - 1) if names else 0
  return {n: ("val" if i >= len(names) - n_val else "train") for i, n in enumerate(names)}


def read_splits_json(path: str, names: Sequence[str]) -> dict:
  """{"train": [...], "val": [...]} -> name -> split for the names listed."""
  try:
    with open(path) as f:
      spec = json.load(f)
  except (OSError, ValueError) as e:
    raise FatalError(f"{path}: unreadable splits file ({e})") from e
  if not isinstance(spec, dict) or not set(spec) <= {"train", "val"}:
    raise FatalError(f"{path}: expected an object with keys 'train' and/or 'val'")
  out = {}
  for split, listed in spec.items():
    for name in listed:
      if name in out:
        raise FatalError(f"{path}: clip {name!r} is in more than one split")
      out[name] = split
  unknown = sorted(set(out) - set(names))
  if unknown:
    raise FatalError(f"{path}: lists clips with no audio: {unknown[:5]}")
  return out


def _transcript(path: str, speaker: str = "actor") -> tuple[str, list]:
  """transcripts/<seg>.json -> (text, [(text, start_s, end_s)]) of one speaker."""
  try:
    with open(path) as f:
      items = json.load(f)
    utts = sorted((float(u["start"]), float(u["end"]), str(u["text"]))
                  for u in items if u.get("speaker") == speaker)
  except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
    raise BadInput(f"{path}: bad transcript ({e!r})", "bad transcript") from e
  for start, end, _ in utts:
    if not (math.isfinite(start) and math.isfinite(end) and end >= start):
      raise BadInput(f"{path}: utterance with start {start} / end {end}", "bad transcript")
  text = " ".join(t.strip() for _, _, t in utts if t.strip())
  return text, [(t, s, e) for s, e, t in utts]


def _stereo(path: str, rate: Optional[int] = None) -> tuple[np.ndarray, int]:
  """A 2-channel wav; with `rate`, any other sample rate is refused (BadInput)."""
  audio, sr = audio_lib.read_wav(path, channels=(2,))
  # A layout documented at 48 kHz that delivers another rate is a wrong or badly converted
  # file (8 kHz telephone audio has nothing above 4 kHz, a third of the mel's bands).
  if rate is not None and sr != rate:
    raise BadInput(f"{path}: sample rate {sr} Hz, expected {rate}", "wrong sample rate")
  return audio, sr


# ------------------------------------------------------------------------ audio2photoreal


def _a2p_subjects(root: str) -> list:
  if glob.glob(os.path.join(root, "*_audio.wav")):
    return [root]
  return sorted(d for d in glob.glob(os.path.join(root, "*"))
                if os.path.isdir(d) and glob.glob(os.path.join(d, "*_audio.wav")))


def plan_audio2photoreal(root: str, args) -> DatasetPlan:
  clips = []
  for subject_dir in _a2p_subjects(root):
    subject = os.path.basename(os.path.normpath(subject_dir))
    scenes = sorted(os.path.basename(p)[:-len("_audio.wav")]
                    for p in glob.glob(os.path.join(subject_dir, "*_audio.wav")))
    for i, scene in enumerate(scenes):
      base = os.path.join(subject_dir, scene)
      files = {"audio": base + "_audio.wav", "pose": base + "_body_pose.npy",
               "face": base + "_face_expression.npy"}
      optional(files, "missing", base + "_missing_face_frames.npy")
      optional(files, "tokens", os.path.join(subject_dir, TOKEN_DIR, scene + ".npy"))
      # AV-Flow: scene names sorted, train = all but the last 2, val = the last 2.
      split = "val" if i >= len(scenes) - 2 else "train"
      clips.append(ClipSpec(f"{subject}_{scene}", split, files))
  if not clips:
    raise FatalError(f"{root}: no <subject>/sceneNN_audio.wav files (audio2photoreal layout)")
  return DatasetPlan("audio2photoreal", clips, [], face=True, head_dim=4, head_kind="a2p_4d",
                     participant=False, options={})


def load_audio2photoreal(spec: ClipSpec, options: dict) -> RawClip:
  del options
  f = spec.files
  stereo, sr = _stereo(f["audio"], A2P_AUDIO_RATE)
  seconds = stereo.shape[0] / sr
  pose = load_array(f["pose"], ndim=2, last=104)
  face = load_array(f["face"], ndim=2, last=C.FACE_DIM)
  align.check_duration(f["pose"], pose.shape[0], C.VIDEO_FPS, seconds)
  align.check_duration(f["face"], face.shape[0], C.VIDEO_FPS, seconds)
  observed = observed_from_missing(f.get("missing"), face.shape[0])
  _check_face(face, observed, f.get("missing", f["face"]))
  raw = RawClip(spec.name, stereo[:, 0], sr, face=face, face_observed=observed,
                head=pose[:, 12:16].astype(np.float64))  # neck + head joint angles.
  if "tokens" in f:
    tok = _token_channels(f["tokens"])[0]
    align.check_token_count(f["tokens"], tok.shape[0], seconds)
    # Stretched so the token stream spans the video exactly (AV-Flow's convention).
    raw.tokens, raw.token_rate = tok, align.stretched_rate(tok.shape[0],
                                                           face.shape[0] / C.VIDEO_FPS)
  return raw


# ------------------------------------------------------------------------------ avflow50h


def _smirk_norm_files(root: str) -> Optional[tuple]:
  """stats/*_min.npy + *_max.npy -> (min (58,), max (58,), description) or None."""
  pairs = {}
  for p in sorted(glob.glob(os.path.join(root, "stats", "*_min.npy"))):
    prefix = p[:-len("_min.npy")]
    if os.path.exists(prefix + "_max.npy"):
      pairs[os.path.basename(prefix)] = (p, prefix + "_max.npy")
  if not pairs:
    return None

  def load(pair):
    return tuple(load_array(x).astype(np.float64).reshape(-1) for x in pair)

  for name, pair in pairs.items():
    lo, hi = load(pair)
    if lo.size == C.SMIRK_DIM and hi.size == C.SMIRK_DIM:
      return lo, hi, f"stats/{name}_min.npy, stats/{name}_max.npy"
  exp = [n for n in pairs if "exp" in n.lower()]
  head = [n for n in pairs if "head" in n.lower() or "pose" in n.lower()]
  if len(exp) == 1 and len(head) == 1:
    (elo, ehi), (hlo, hhi) = load(pairs[exp[0]]), load(pairs[head[0]])
    lo, hi = np.concatenate([elo, hlo]), np.concatenate([ehi, hhi])
    if lo.size == C.SMIRK_DIM and hi.size == C.SMIRK_DIM:
      return lo, hi, f"stats/{exp[0]}_{{min,max}}.npy + stats/{head[0]}_{{min,max}}.npy"
  raise FatalError(f"{os.path.join(root, 'stats')}: min/max files {sorted(pairs)} do not "
                   f"give {C.SMIRK_DIM} SMIRK dims (expected one *_min/_max pair of 58 values, "
                   "or an expression pair and a headpose pair)")


def _load_smirk(files: dict) -> np.ndarray:
  exp = load_array(files["smirk_exp"])
  head = load_array(files["smirk_head"])
  if exp.ndim < 1 or head.ndim < 1 or exp.shape[0] != head.shape[0]:
    raise BadInput(f"{files['smirk_exp']}: shape {exp.shape} vs {files['smirk_head']} shape "
                   f"{head.shape} (frame counts differ)", "duration mismatch")
  both = np.concatenate([exp.reshape(exp.shape[0], -1), head.reshape(head.shape[0], -1)], -1)
  if both.shape[1] != C.SMIRK_DIM:
    raise BadInput(f"{files['smirk_exp']} + {files['smirk_head']}: {both.shape[1]} dims "
                   f"together, expected {C.SMIRK_DIM}", "wrong dims")
  return both.astype(np.float64)


def _compute_smirk_minmax(clips: list) -> Optional[tuple]:
  lo = hi = None
  for clip in clips:
    if clip.split != "train" or "smirk_exp" not in clip.files:
      continue
    try:
      x = _load_smirk(clip.files)
    except BadInput:
      continue  # The clip itself will be skipped with this reason later.
    if x.shape[0] == 0:
      continue
    lo = x.min(0) if lo is None else np.minimum(lo, x.min(0))
    hi = x.max(0) if hi is None else np.maximum(hi, x.max(0))
  return None if lo is None else (lo, hi, "computed over the train split")


def plan_avflow50h(root: str, args) -> DatasetPlan:
  segs = sorted(os.path.basename(p)[:-4] for p in glob.glob(os.path.join(root, "audio", "*.wav")))
  if not segs:
    raise FatalError(f"{root}: no audio/<segment>.wav files (avflow50h layout)")
  skipped, dated = [], []
  for seg in segs:
    m = _DATE.match(seg)
    if m is None:
      skipped.append((seg, f"{os.path.join(root, 'audio', seg + '.wav')}: segment name does "
                      "not start with a date YYYYMMDD_", "bad name"))
    else:
      dated.append((seg, m.group(1)))
  dates = sorted({d for _, d in dated})
  notes = []
  if args.val_dates:
    val_dates = set(args.val_dates)
    unknown = sorted(val_dates - set(dates))
    if unknown:
      raise FatalError(f"--val-dates {','.join(unknown)}: no segment recorded on that date "
                       f"(dates present: {','.join(dates)})")
  else:
    # Default: the last two recording dates; keep at least one date for training.
    n_val = min(2, max(len(dates) - 1, 0))
    val_dates = set(dates[len(dates) - n_val:])
    if n_val < 2:
      notes.append(f"only {len(dates)} recording date(s): val = {sorted(val_dates)}")
  participant = os.path.isdir(os.path.join(root, SMIRK_DIR)) and not args.no_participant
  clips = []
  for seg, date in dated:
    files = {"audio": os.path.join(root, "audio", seg + ".wav"),
             "face": os.path.join(root, "expression_codes", seg + ".npy"),
             "head": os.path.join(root, "headpose", seg + "--headpose.npy")}
    optional(files, "tokens", os.path.join(root, TOKEN_DIR, seg + ".npy"))
    optional(files, "missing", os.path.join(root, "missing_frames", seg + ".npy"))
    optional(files, "transcript", os.path.join(root, "transcripts", seg + ".json"))
    if participant:
      files["smirk_exp"] = os.path.join(root, SMIRK_DIR, seg + "--expression.npy")
      files["smirk_head"] = os.path.join(root, SMIRK_DIR, seg + "--headpose.npy")
    clips.append(ClipSpec(seg, "val" if date in val_dates else "train", files))
  options, extra = {}, {}
  if participant:
    norm = _smirk_norm_files(root) or _compute_smirk_minmax(clips)
    if norm is None:
      raise FatalError(f"{os.path.join(root, SMIRK_DIR)}: no readable SMIRK files in the train "
                       "split to compute the participant min/max from")
    lo, hi, source = norm
    options = {"smirk_min": lo.tolist(), "smirk_max": hi.tolist()}
    extra["participant_norm"] = {"min": lo.tolist(), "max": hi.tolist(), "source": source}
  extra["val_dates"] = sorted(val_dates)
  return DatasetPlan("avflow50h", clips, skipped, face=True, head_dim=7,
                     head_kind="quat_trans", participant=participant, options=options,
                     notes=notes, extra_manifest=extra)


def minmax_normalise(x: np.ndarray, lo: Sequence[float], hi: Sequence[float]) -> np.ndarray:
  """Maps [lo, hi] to [-1, 1] per dim; constant dims (hi - lo < 1e-8) map to 0."""
  lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
  span = hi - lo
  safe = np.where(span < 1e-8, 1.0, span)
  return np.where(span < 1e-8, 0.0, 2.0 * (x - lo) / safe - 1.0)


def load_avflow50h(spec: ClipSpec, options: dict) -> RawClip:
  f = spec.files
  stereo, sr = _stereo(f["audio"], A2P_AUDIO_RATE)
  seconds = stereo.shape[0] / sr
  face = load_array(f["face"], ndim=2, last=C.FACE_DIM)
  align.check_duration(f["face"], face.shape[0], C.VIDEO_FPS, seconds)
  transforms = load_array(f["head"], ndim=3)
  head = headpose.transforms_to_head(transforms, f["head"])
  align.check_duration(f["head"], head.shape[0], C.VIDEO_FPS, seconds)
  observed = observed_from_missing(f.get("missing"), face.shape[0])
  _check_face(face, observed, f.get("missing", f["face"]))
  raw = RawClip(spec.name, stereo[:, 0], sr, face=face, face_observed=observed, head=head,
                head_is_quat=True)
  video_seconds = face.shape[0] / C.VIDEO_FPS
  tok = None
  if "tokens" in f:
    tok = _token_channels(f["tokens"])
    align.check_token_count(f["tokens"], tok.shape[1], seconds)
    raw.tokens = tok[0]
    raw.token_rate = align.stretched_rate(tok.shape[1], video_seconds)
  if "smirk_exp" in f:
    smirk = _load_smirk(f)
    align.check_duration(f["smirk_exp"], smirk.shape[0], C.VIDEO_FPS, seconds)
    raw.smirk = minmax_normalise(smirk, options["smirk_min"], options["smirk_max"])
    if tok is not None:
      raw.participant_tokens, raw.participant_token_rate = tok[1], raw.token_rate
    else:
      raw.participant_audio = stereo[:, 1]
  if "transcript" in f:
    raw.text, raw.utterances = _transcript(f["transcript"])
  return raw


# -------------------------------------------------------------------------------- generic

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


def _split_names(root: str, names: list, args) -> tuple[dict, list]:
  """Split of each clip from splits.json or --val-fraction; returns (splits, excluded)."""
  path = os.path.join(root, "splits.json")
  if os.path.exists(path):
    listed = read_splits_json(path, names)
    return listed, sorted(set(names) - set(listed))
  return fraction_split(names, args.val_fraction), []


def plan_generic(root: str, args) -> DatasetPlan:
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
  splits, excluded = _split_names(root, names, args)
  clips = []
  for n in names:
    if n not in splits:
      continue
    base = os.path.join(root, n)
    files = {"audio": base + ".wav"}
    if face:
      files.update(face=base + ".face.npy", head=base + ".head.npy")
      optional(files, "missing", base + ".missing.npy")
    optional(files, "tokens", base + ".tokens.npy")
    optional(files, "text", base + ".txt")
    clips.append(ClipSpec(n, splits[n], files))
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
  f = spec.files
  fps = options["fps"]
  audio, sr = audio_lib.read_wav(f["audio"], channels=tuple(range(1, 65)))
  seconds = audio.shape[0] / sr
  raw = RawClip(spec.name, audio[:, 0], sr)
  if "face" in f:
    face = load_array(f["face"], ndim=2, last=C.FACE_DIM)
    align.check_duration(f["face"], face.shape[0], fps, seconds)
    head = load_array(f["head"])
    if head.ndim == 3:
      head = headpose.transforms_to_head(head, f["head"])
    elif head.ndim != 2 or head.shape[1] != options["head_dim"]:
      raise BadInput(f"{f['head']}: shape {head.shape}, expected (N, {options['head_dim']})",
                     "wrong dims")
    if head.shape[1] != options["head_dim"]:
      raise BadInput(f"{f['head']}: {head.shape[1]}-d head, the dataset's is "
                     f"{options['head_dim']}-d", "wrong dims")
    align.check_duration(f["head"], head.shape[0], fps, seconds)
    observed = observed_from_missing(f.get("missing"), face.shape[0])
    _check_face(face, observed, f.get("missing", f["face"]))
    raw.face, raw.face_observed, raw.face_rate = face, observed, fps
    raw.head, raw.head_rate, raw.head_is_quat = head.astype(np.float64), fps, head.shape[1] == 7
  if "tokens" in f:
    tok = load_array(f["tokens"])
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


# ------------------------------------------------------------------------------- ljspeech


def plan_ljspeech(root: str, args) -> DatasetPlan:
  meta = os.path.join(root, "metadata.csv")
  if not os.path.exists(meta):
    raise FatalError(f"{meta}: missing (ljspeech layout: metadata.csv + wavs/<id>.wav)")
  rows = {}
  with open(meta, encoding="utf-8", newline="") as f:
    for line_no, row in enumerate(csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE), 1):
      if not row:
        continue
      if len(row) < 2 or not row[0]:
        raise FatalError(f"{meta}:{line_no}: expected 'id|text|normalized text'")
      text = row[2] if len(row) > 2 and row[2].strip() else row[1]
      rows[row[0]] = " ".join(text.split())
  splits, excluded = _split_names(root, list(rows), args)
  clips = [ClipSpec(i, splits[i], {"audio": os.path.join(root, "wavs", i + ".wav")},
                    {"text": rows[i]}) for i in sorted(rows) if i in splits]
  notes = [f"{len(excluded)} clip(s) not listed in splits.json: {excluded[:5]}"] if excluded else []
  return DatasetPlan("ljspeech", clips, [], face=False, head_dim=0, head_kind=None,
                     participant=False, options={}, notes=notes)


def load_ljspeech(spec: ClipSpec, options: dict) -> RawClip:
  del options
  audio, sr = audio_lib.read_wav(spec.files["audio"], channels=(1,))
  text = spec.extra["text"]
  return RawClip(spec.name, audio[:, 0], sr, text=text,
                 utterances=[(text, 0.0, audio.shape[0] / sr)])


# ------------------------------------------------------------------------------- dispatch

_PLANNERS = {"audio2photoreal": plan_audio2photoreal, "avflow50h": plan_avflow50h,
             "generic": plan_generic, "ljspeech": plan_ljspeech}
_LOADERS = {"audio2photoreal": load_audio2photoreal, "avflow50h": load_avflow50h,
            "generic": load_generic, "ljspeech": load_ljspeech}


def plan(source_format: str, root: str, args: Any) -> DatasetPlan:
  """Lists the clips of `root` in `source_format` and fixes the dataset-wide options.

  Args:
    source_format: one of FORMATS.
    root: input directory.
    args: parsed command-line options (val_dates, val_fraction, no_participant).

  Raises:
    FatalError: the layout is not recognisable.
  """
  if not os.path.isdir(root):
    raise FatalError(f"{root}: input directory does not exist")
  result = _PLANNERS[source_format](root, args)
  rig = os.path.join(root, FACE_RIG)
  if result.face and os.path.exists(rig):
    result.face_rig = rig
  return result


def load_clip(source_format: str, spec: ClipSpec, options: dict) -> RawClip:
  """Reads and checks one clip; raises BadInput naming the file and the reason."""
  return _LOADERS[source_format](spec, options)


def needs_asr(dataset: DatasetPlan) -> list:
  """Clips whose (actor or participant) tokens must come from the wav2vec2 port."""
  return [c for c in dataset.clips if "tokens" not in c.files]
