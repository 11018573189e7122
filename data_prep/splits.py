"""Train/val assignment of a layout's clips: `splits.json` or the last --val-fraction.

Used by the generic and ljspeech layouts; audio2photoreal and avflow50h split by scene
and by recording date in their own planners.
"""

import json
import math
import os
from typing import Sequence

from avflow_jax.core.errors import FatalError


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


def split_names(root: str, names: list, args) -> tuple[dict, list]:
  """Split of each clip from <root>/splits.json or --val-fraction.

  Args:
    root: input directory.
    names: every clip of the layout.
    args: parsed command-line options (val_fraction).

  Returns:
    (name -> split, the names splits.json leaves out, sorted).
  """
  path = os.path.join(root, "splits.json")
  if os.path.exists(path):
    listed = read_splits_json(path, names)
    return listed, sorted(set(names) - set(listed))
  return fraction_split(names, args.val_fraction), []
