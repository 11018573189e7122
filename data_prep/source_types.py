"""The values the readers hand on: `ClipSpec`, `DatasetPlan` and `RawClip`.

A layout's planner (data_prep/readers.py `plan`) returns a `DatasetPlan` listing one
`ClipSpec` per clip; its loader (`load_clip`) turns one `ClipSpec` into a `RawClip`, the
streams at their native rates, which `data_prep.clip.build_record` puts on the mel grid.
"""

import dataclasses
from typing import Optional

import numpy as np

from avflow_jax.core import constants as C


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
