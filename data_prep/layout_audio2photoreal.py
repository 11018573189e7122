"""The audio2photoreal layout: <subject>/sceneNN_{audio.wav,body_pose.npy,face_expression.npy}.

docs/data_prep.md describes it. Scenes sorted per subject; the last two are val (AV-Flow's
split). The head is the neck + head joint angles of the body pose (4-d).
"""

import glob
import os

import numpy as np

from avflow_jax.core import align
from avflow_jax.core import constants as C
from avflow_jax.core.errors import FatalError
from data_prep import source_files
from data_prep.source_types import ClipSpec
from data_prep.source_types import DatasetPlan
from data_prep.source_types import RawClip


def _a2p_subjects(root: str) -> list:
  if glob.glob(os.path.join(root, "*_audio.wav")):
    return [root]
  return sorted(d for d in glob.glob(os.path.join(root, "*"))
                if os.path.isdir(d) and glob.glob(os.path.join(d, "*_audio.wav")))


def plan_audio2photoreal(root: str, args) -> DatasetPlan:
  """Lists <root>[/<subject>]/sceneNN_audio.wav clips; raises FatalError when none."""
  clips = []
  for subject_dir in _a2p_subjects(root):
    subject = os.path.basename(os.path.normpath(subject_dir))
    scenes = sorted(os.path.basename(p)[:-len("_audio.wav")]
                    for p in glob.glob(os.path.join(subject_dir, "*_audio.wav")))
    for i, scene in enumerate(scenes):
      base = os.path.join(subject_dir, scene)
      files = {"audio": base + "_audio.wav", "pose": base + "_body_pose.npy",
               "face": base + "_face_expression.npy"}
      source_files.optional(files, "missing", base + "_missing_face_frames.npy")
      source_files.optional(files, "tokens",
                            os.path.join(subject_dir, source_files.TOKEN_DIR, scene + ".npy"))
      # AV-Flow: scene names sorted, train = all but the last 2, val = the last 2.
      split = "val" if i >= len(scenes) - 2 else "train"
      clips.append(ClipSpec(f"{subject}_{scene}", split, files))
  if not clips:
    raise FatalError(f"{root}: no <subject>/sceneNN_audio.wav files (audio2photoreal layout)")
  return DatasetPlan("audio2photoreal", clips, [], face=True, head_dim=4, head_kind="a2p_4d",
                     participant=False, options={})


def load_audio2photoreal(spec: ClipSpec, options: dict) -> RawClip:
  """Reads one scene: actor audio (channel 0), face codes, head angles, tokens."""
  del options
  f = spec.files
  stereo, sr = source_files.read_stereo(f["audio"], source_files.A2P_AUDIO_RATE)
  seconds = stereo.shape[0] / sr
  pose = source_files.load_array(f["pose"], ndim=2, last=104)
  face = source_files.load_array(f["face"], ndim=2, last=C.FACE_DIM)
  align.check_duration(f["pose"], pose.shape[0], C.VIDEO_FPS, seconds)
  align.check_duration(f["face"], face.shape[0], C.VIDEO_FPS, seconds)
  observed = source_files.observed_from_missing(f.get("missing"), face.shape[0])
  source_files.check_face(face, observed, f.get("missing", f["face"]))
  raw = RawClip(spec.name, stereo[:, 0], sr, face=face, face_observed=observed,
                head=pose[:, 12:16].astype(np.float64))  # neck + head joint angles.
  if "tokens" in f:
    tok = source_files.token_channels(f["tokens"])[0]
    align.check_token_count(f["tokens"], tok.shape[0], seconds)
    # Stretched so the token stream spans the video exactly (AV-Flow's convention).
    raw.tokens, raw.token_rate = tok, align.stretched_rate(tok.shape[0],
                                                           face.shape[0] / C.VIDEO_FPS)
  return raw
