"""Source layouts -> a list of clips (`plan`) and per-clip raw streams (`load_clip`).

Four layouts are understood: `audio2photoreal`, `avflow50h`, `generic` and `ljspeech`
(docs/data_prep.md describes them), each a planner and a loader in data_prep/layout_<name>.py,
registered here in `_PLANNERS` / `_LOADERS`. `plan` runs once in the main process: it lists
the clips, assigns splits and fixes the dataset-wide options (dims, participant min/max).
`load_clip` runs in a worker: it reads one clip's files, checks them and returns the
streams at their native rates; `data_prep.clip.build_record` puts them on the mel grid.
"""

import os
from typing import Any

from avflow_jax.core.errors import FatalError
from data_prep import layout_audio2photoreal
from data_prep import layout_avflow50h
from data_prep import layout_generic
from data_prep import layout_ljspeech
from data_prep.source_types import ClipSpec
from data_prep.source_types import DatasetPlan
from data_prep.source_types import RawClip

_PLANNERS = {"audio2photoreal": layout_audio2photoreal.plan_audio2photoreal,
             "avflow50h": layout_avflow50h.plan_avflow50h,
             "generic": layout_generic.plan_generic,
             "ljspeech": layout_ljspeech.plan_ljspeech}
_LOADERS = {"audio2photoreal": layout_audio2photoreal.load_audio2photoreal,
            "avflow50h": layout_avflow50h.load_avflow50h,
            "generic": layout_generic.load_generic,
            "ljspeech": layout_ljspeech.load_ljspeech}
FORMATS = tuple(_PLANNERS)  # ("audio2photoreal", "avflow50h", "generic", "ljspeech")
FACE_RIG = os.path.join("demo_rig", "face_rig.npz")


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
