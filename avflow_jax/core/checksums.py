"""Content checksums of checkpoint steps: STEP/avflow_checksums.json (size, SHA-256 per file).

Written by `checkpointing.seal` once orbax has committed a step; checked before a step is
restored for training (`checkpointing.restore`) or loaded for sampling (`run_dir.load_params`).
"""

import hashlib
import json
import os
from typing import Iterable, Optional

import jax
import jax.numpy as jnp
import numpy as np

CHECKSUMS = "avflow_checksums.json"
_CHUNK = 1 << 20


def _step_files(step_dir: str) -> list[str]:
  out = []
  for root, _, names in os.walk(step_dir):
    for name in names:
      rel = os.path.relpath(os.path.join(root, name), step_dir)
      if rel != CHECKSUMS:
        out.append(rel)
  return sorted(out)


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      h.update(chunk)
  return h.hexdigest()


def table_json(step_dir: str) -> str:
  """The seal of a committed step: every file's size and SHA-256, as the JSON to write."""
  table = {rel: {"size": os.path.getsize(os.path.join(step_dir, rel)),
                 "sha256": _sha256(os.path.join(step_dir, rel))}
           for rel in _step_files(step_dir)}
  return json.dumps({"version": 1, "files": table}, indent=1)


def verify(step_dir: str) -> tuple[bool, Optional[str]]:
  """(sealed, what is wrong or None) for one checkpoint step directory."""
  path = os.path.join(step_dir, CHECKSUMS)
  if not os.path.exists(path):
    return False, None
  try:
    with open(path) as f:
      table = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    return True, f"unreadable {CHECKSUMS} ({e})"
  for rel, want in sorted(table.items()):
    full = os.path.join(step_dir, rel)
    if not os.path.exists(full):
      return True, f"file {rel} is missing"
    if os.path.getsize(full) != want["size"]:
      return True, f"file {rel} has {os.path.getsize(full)} bytes, {want['size']} when saved"
    if _sha256(full) != want["sha256"]:
      return True, f"file {rel} does not match its checksum (changed on disk since the save)"
  return True, None


def newest_verified_step(root: str, steps: Iterable[int]) -> tuple[Optional[int], list[str]]:
  """The newest step under `root` whose seal (if any) verifies, and why newer ones were skipped.

  Used by readers that only load weights (sampling): they skip a damaged step without
  moving it.
  """
  skipped = []
  for step in sorted(steps, reverse=True):
    _, problem = verify(os.path.join(root, str(step)))
    if problem is None:
      return step, skipped
    skipped.append(f"step {step}: {problem}")
  return None, skipped


def all_finite(tree) -> bool:
  """Whether every float array of a tree (host or device, sharded or not) is finite.

  One jitted reduction on the devices: no array is copied to the host.
  """
  leaves = [x for x in jax.tree.leaves(tree) if np.issubdtype(np.dtype(x.dtype), np.floating)]
  if not leaves:
    return True
  return bool(jax.jit(lambda xs: jnp.all(jnp.stack([jnp.isfinite(x).all() for x in xs])))(
      leaves))
