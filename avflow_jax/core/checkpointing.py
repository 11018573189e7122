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
  if not isinstance(keep, int) or keep < 1:
    # Orbax's LatestN(0) would delete every checkpoint, a resumed run's included.
    raise ValueError(f"config.keep_checkpoints={keep}: must be an integer >= 1")
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
