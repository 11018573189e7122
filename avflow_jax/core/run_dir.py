"""The run directory: what a training workdir holds, written by training and read by everyone.

  WORKDIR/config.json      the run's resolved ConfigDict (with the data dir it trained on)
  WORKDIR/checkpoints/N/   orbax checkpoints; only committed (renamed) steps are digits
  WORKDIR/metrics.jsonl    one JSON object per logged step
  WORKDIR/tensorboard/     TensorBoard event files
  WORKDIR/head_vae/        the automatically trained head-pose VAE of an AV run (a run dir too)

Every reader here raises `AvatarError` with a message naming the path and the fix.
"""

import json
import os
from typing import Any, Optional

from absl import logging
import jax
import ml_collections
import orbax.checkpoint as ocp

from avflow_jax.core import checksums
from avflow_jax.core import files
from avflow_jax.core.errors import AvatarError

RUN_CONFIG = "config.json"
CHECKPOINTS = "checkpoints"
HEAD_VAE_DIR = "head_vae"


def checkpoint_root(workdir: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), CHECKPOINTS)


def save_run_config(config, workdir: str, data_dir: str) -> None:
  """Writes WORKDIR/config.json (with the resolved data dir) so samplers can rebuild the run."""
  if jax.process_index() != 0:
    return
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.data.dir = data_dir
    if c.task == "av" and not c.head_vae.workdir:
      c.head_vae.workdir = os.path.join(workdir, HEAD_VAE_DIR)
  files.write_atomic(os.path.join(workdir, RUN_CONFIG), c.to_json_best_effort(indent=2))


def has_run_config(workdir: str) -> bool:
  return os.path.exists(os.path.join(os.path.expanduser(workdir), RUN_CONFIG))


def read_run_config(workdir: str, what: str = "workdir") -> ml_collections.ConfigDict:
  """WORKDIR/config.json as a ConfigDict; AvatarError naming the file (`what` names the flag)."""
  workdir = os.path.expanduser(workdir)
  path = os.path.join(workdir, RUN_CONFIG)
  if not os.path.isdir(workdir):
    raise AvatarError(f"{what} {workdir}: no such directory")
  if not os.path.exists(path):
    raise AvatarError(f"{path}: missing; {workdir} is not a training workdir (train one with "
                      "`python -m avflow_jax.train --workdir ...`)")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, json.JSONDecodeError) as e:
    raise AvatarError(f"{path}: unreadable run config ({e})") from e


def sample_temperature(config) -> float:
  """The noise temperature a run samples at by default: `config.sample.temperature`, or 1.0
  (the trained distribution) for a run saved before the field existed."""
  return float(config.get("sample", {}).get("temperature", 1.0))


def checkpoint_steps(workdir: str) -> list[int]:
  """Committed checkpoint steps of a workdir, ascending ([] if none)."""
  root = checkpoint_root(workdir)
  if not os.path.isdir(root):
    return []
  # Only directories that orbax committed (renamed from their temporary name) are steps.
  return sorted(int(d) for d in os.listdir(root) if d.isdigit())


def latest_step(workdir: str) -> Optional[int]:
  steps = checkpoint_steps(workdir)
  return steps[-1] if steps else None


def latest_checkpoint_dir(workdir: str) -> tuple[int, str]:
  """(step, path) of the newest committed checkpoint; AvatarError if there is none."""
  root = checkpoint_root(workdir)
  if not os.path.isdir(root):
    raise AvatarError(f"{workdir}: no checkpoints directory (train a model first)")
  step = latest_step(workdir)
  if step is None:
    raise AvatarError(f"{root}: no finished checkpoint")
  return step, os.path.join(root, str(step))


def checkpoint_dir(workdir: str, step: int, what: Optional[str] = None) -> tuple[int, str]:
  """(step, path) of the committed checkpoint `step`; AvatarError listing the steps there are."""
  steps = checkpoint_steps(workdir)
  if int(step) not in steps:
    there = ", ".join(map(str, steps)) if steps else "none"
    raise AvatarError(f"{what or 'workdir ' + workdir}: no checkpoint at step {step} "
                      f"(committed steps: {there})")
  return int(step), os.path.join(checkpoint_root(workdir), str(int(step)))


def load_params(workdir: str, which: str = "ema", sharding=None,
                what: Optional[str] = None, step: Optional[int] = None) -> tuple[int, Any]:
  """Loads one parameter tree of the latest checkpoint of a workdir (or of `step`), for sampling.

  Args:
    workdir: the training workdir (checkpoints in WORKDIR/checkpoints).
    which: "ema" or "params".
    sharding: where to put the arrays (default: the first local device, replicated).
    what: how the message of an error names the workdir (default: "workdir WORKDIR").
    step: a checkpoint step to load instead of the latest (a learning curve); a damaged one is
      an error, not skipped for another.

  Returns:
    (step, params tree of jax arrays).

  Raises:
    AvatarError: no checkpoint, no such tree, or an unreadable checkpoint.
  """
  what = what or f"workdir {workdir}"
  if step is not None:
    step, path = checkpoint_dir(workdir, step, what)
    candidates = [step]
  else:
    try:
      step, path = latest_checkpoint_dir(workdir)
    except AvatarError as e:
      raise AvatarError(f"{what}: {e}") from e
    candidates = checkpoint_steps(workdir)
  good, skipped = checksums.newest_verified_step(checkpoint_root(workdir), candidates)
  if skipped:
    if good is None:
      raise AvatarError(f"{what}: no intact checkpoint ({'; '.join(skipped)})")
    logging.warning("%s: using step %d; skipped %s", what, good, "; ".join(skipped))
    step, path = good, os.path.join(checkpoint_root(workdir), str(good))
  try:
    checkpointer = ocp.PyTreeCheckpointer()
    meta = checkpointer.metadata(os.path.join(path, "state")).item_metadata.tree
    if which == "ema" and "ema" not in meta and "params" in meta:
      # A checkpoint without an EMA (an imported official model: its trainer keeps none).
      logging.info("%s: %s has no EMA weights; using its params", what, path)
      which = "params"
    if which not in meta:
      raise AvatarError(f"{what}: {path}: checkpoint has no {which!r} tree (has {sorted(meta)})")
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {which: jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding), meta[which])}
    restored = checkpointer.restore(
        os.path.join(path, "state"),
        args=ocp.args.PyTreeRestore(
            item=target,
            restore_args=jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding),
                                      target),
            partial_restore=True))
  except AvatarError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise AvatarError(f"{what}: cannot read the checkpoint under {checkpoint_root(workdir)} "
                      f"({msg[:300]})") from e
  if not checksums.all_finite(restored[which]):
    raise AvatarError(f"{what}: {path}: the {which!r} weights contain NaN/inf (the run "
                      "diverged or the file is damaged); use an earlier checkpoint")
  return step, restored[which]
