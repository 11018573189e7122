"""The avflow50h layout: AV-Flow's 50-hour dyadic set (audio/, expression_codes/, headpose/...).

docs/data_prep.md describes it. Segments are named YYYYMMDD_...; val is the segments of
--val-dates (default the last two dates). With participant/camera01/smirk_outputs/ the
participant stream is [tokens ; SMIRK], the SMIRK features min-max normalised with stats/
or with the train split's range.
"""

import glob
import json
import math
import os
import re
from typing import Optional, Sequence

import numpy as np

from avflow_jax.core import align
from avflow_jax.core import constants as C
from avflow_jax.core.errors import BadInput
from avflow_jax.core.errors import FatalError
from data_prep import headpose
from data_prep import source_files
from data_prep.source_types import ClipSpec
from data_prep.source_types import DatasetPlan
from data_prep.source_types import RawClip

SMIRK_DIR = os.path.join("participant", "camera01", "smirk_outputs")
_DATE = re.compile(r"^(\d{8})_")


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
    return tuple(source_files.load_array(x).astype(np.float64).reshape(-1) for x in pair)

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
  exp = source_files.load_array(files["smirk_exp"])
  head = source_files.load_array(files["smirk_head"])
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
  """Lists audio/<seg>.wav segments, splits them by date, fixes the SMIRK min/max.

  Args:
    root: input directory.
    args: parsed command-line options (val_dates, no_participant).

  Raises:
    FatalError: no segment, an unknown --val-dates date, or no SMIRK range.
  """
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
    source_files.optional(files, "tokens", os.path.join(root, source_files.TOKEN_DIR, seg + ".npy"))
    source_files.optional(files, "missing", os.path.join(root, "missing_frames", seg + ".npy"))
    source_files.optional(files, "transcript", os.path.join(root, "transcripts", seg + ".json"))
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
  """Reads one segment: actor streams, tokens, transcript and the participant's."""
  f = spec.files
  stereo, sr = source_files.read_stereo(f["audio"], source_files.A2P_AUDIO_RATE)
  seconds = stereo.shape[0] / sr
  face = source_files.load_array(f["face"], ndim=2, last=C.FACE_DIM)
  align.check_duration(f["face"], face.shape[0], C.VIDEO_FPS, seconds)
  transforms = source_files.load_array(f["head"], ndim=3)
  head = headpose.transforms_to_head(transforms, f["head"])
  align.check_duration(f["head"], head.shape[0], C.VIDEO_FPS, seconds)
  observed = source_files.observed_from_missing(f.get("missing"), face.shape[0])
  source_files.check_face(face, observed, f.get("missing", f["face"]))
  raw = RawClip(spec.name, stereo[:, 0], sr, face=face, face_observed=observed, head=head,
                head_is_quat=True)
  video_seconds = face.shape[0] / C.VIDEO_FPS
  tok = None
  if "tokens" in f:
    tok = source_files.token_channels(f["tokens"])
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
