"""A thin wrapper over orbax's CheckpointManager: train state + the Grain iterator state.

Orbax writes each step into a temporary directory and renames it only after every process
has finished (the commit), so a killed job never leaves a checkpoint that looks complete but
is not, and `latest_step` never returns one.
"""

import os
from typing import Any, Optional

import grain
import jax
import orbax.checkpoint as ocp


def make_manager(directory: str, *, keep: int, async_save: bool = True,
                 save_interval: Optional[int] = None) -> ocp.CheckpointManager:
  """Creates a manager keeping the latest `keep` checkpoints.

  Args:
    directory: checkpoint root (created if needed).
    keep: checkpoints kept.
    async_save: write in a background thread.
    save_interval: if given, `should_save` is true every this many steps; saves requested
      explicitly with `force=True` (preemption, end of training) are always taken.
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  policies = [ocp.checkpoint_managers.PreemptionCheckpointingPolicy()]
  if save_interval:
    policies.append(ocp.checkpoint_managers.FixedIntervalPolicy(save_interval))
  options = ocp.CheckpointManagerOptions(
      save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies),
      preservation_policy=ocp.checkpoint_managers.LatestN(keep),
      enable_async_checkpointing=async_save,
      cleanup_tmp_directories=True)
  return ocp.CheckpointManager(directory, options=options)


def save(manager: ocp.CheckpointManager, step: int, state: Any,
         data_iter: Optional[grain.DatasetIterator] = None, force: bool = False) -> bool:
  """Saves the state (and the data iterator's position) at `step`."""
  items = {"state": ocp.args.StandardSave(state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointSave(data_iter)
  return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            data_iter: Optional[grain.DatasetIterator] = None, step: Optional[int] = None):
  """Restores onto the shardings carried by `abstract_state` (any mesh).

  Args:
    manager: the checkpoint manager.
    abstract_state: a tree of jax.ShapeDtypeStruct with `sharding` set for the current mesh.
    data_iter: if given, its position is restored in place.
    step: which step (default: the latest).

  Returns:
    (step, state) or (None, None) when there is no checkpoint.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return None, None
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  restored = manager.restore(step, args=ocp.args.Composite(**items))
  return step, restored["state"]


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """Attaches shardings to a tree of ShapeDtypeStructs (the restore target)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)


def latest_checkpoint_dir(workdir: str) -> tuple[int, str]:
  """(step, path) of the newest committed checkpoint of a training workdir."""
  ckpt_dir = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise FileNotFoundError(f"{workdir}: no checkpoints directory (train a model first)")
  # Only directories that orbax committed (renamed from their temporary name) are steps.
  steps = sorted(int(d) for d in os.listdir(ckpt_dir) if d.isdigit())
  if not steps:
    raise FileNotFoundError(f"{ckpt_dir}: no finished checkpoint")
  return steps[-1], os.path.join(ckpt_dir, str(steps[-1]))


def load_params(workdir: str, which: str = "ema", sharding=None) -> tuple[int, Any]:
  """Loads one parameter tree of the latest checkpoint of a workdir, for sampling.

  Args:
    workdir: the training workdir (checkpoints in WORKDIR/checkpoints).
    which: "ema" or "params".
    sharding: where to put the arrays (default: the first local device, replicated).

  Returns:
    (step, params tree of jax arrays).
  """
  step, path = latest_checkpoint_dir(workdir)
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(os.path.join(path, "state")).item_metadata.tree
  if which not in meta:
    raise KeyError(f"{path}: checkpoint has no {which!r} tree (has {sorted(meta)})")
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
  return step, restored[which]
