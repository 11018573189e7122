"""A thin wrapper over orbax's CheckpointManager: train state + the Grain iterator state.

Orbax writes each step into a temporary directory and renames it only after every process
has finished (the commit), so a killed job never leaves a checkpoint that looks complete but
is not, and `latest_step` never returns one.

On top of that, every step this package saves is sealed: once orbax has committed it,
`seal` writes STEP/avflow_checksums.json (size and SHA-256 of every file). `restore` checks the
seal, restores, and checks that the parameters are finite; a step that fails any of these is
moved aside to STEP.corrupt (never deleted) with a warning naming what was wrong, and the next
older step is tried. A step without a seal (written by an older version, or killed between
the commit and the seal) is restored unverified, with a warning.
"""

import functools
import os
from typing import Any, Optional

from absl import logging
import grain
import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp

from avflow_jax.core import checksums
from avflow_jax.core import files

CORRUPT_SUFFIX = ".corrupt"


@functools.cache  # Once a process: orbax warns at every override.
def _plain_array_saves_on_cpu():
  """On CPU devices, saves each array from one replica, not sliced across the replicas.

  Orbax's replica-parallel save slices every replicated array into one piece per replica, one
  compiled program per shape: on CPU devices, which share the host's memory, that buys nothing
  and costs a compilation per parameter shape at a process's first save (152 for the
  text-to-tokens model on 8 devices). Orbax already turns it off on GPUs; TPUs keep its
  default. The registration is orbax's process-wide type registry, so it is made lazily (the
  backend must not start before `jax.distributed.initialize`) and once.
  """
  if jax.default_backend() == "cpu":
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(use_replica_parallel=False), override=True)


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
  _plain_array_saves_on_cpu()
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


def seal(manager: ocp.CheckpointManager, steps: list) -> None:
  """Waits for pending saves, then writes the checksums of `steps` (emptied); process 0 only."""
  manager.wait_until_finished()
  if jax.process_index() == 0:
    for step in steps:
      step_dir = os.path.join(str(manager.directory), str(step))
      if os.path.isdir(step_dir):
        files.write_atomic(os.path.join(step_dir, checksums.CHECKSUMS), checksums.table_json(step_dir))
  steps.clear()


def _quarantine(step_dir: str) -> str:
  """Moves a bad step out of orbax's sight (STEP.corrupt[.N]); nothing is deleted."""
  target, n = step_dir + CORRUPT_SUFFIX, 1
  while os.path.exists(target):
    target, n = f"{step_dir}{CORRUPT_SUFFIX}.{n}", n + 1
  if jax.process_index() == 0:
    os.rename(step_dir, target)
  if jax.process_count() > 1:  # Every process must see the rename before reloading.
    multihost_utils.sync_global_devices("avflow_checkpoint_quarantine")
  return target


def _restore_one(manager, step, abstract_state, data_iter) -> tuple[Any, Optional[str]]:
  """(state, None) or (None, why the step is unusable)."""
  step_dir = os.path.join(str(manager.directory), str(step))
  sealed, problem = checksums.verify(step_dir)
  if problem:
    return None, problem
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iter is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
  try:
    state = manager.restore(step, args=ocp.args.Composite(**items))["state"]
  except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return None, f"unreadable ({type(e).__name__}: {first})"
  if not checksums.all_finite(state):
    return None, "its parameters or optimiser state contain NaN/inf"
  if not sealed:
    logging.warning("checkpoint %s has no %s (saved by an older version or killed before "
                    "it was sealed): restored unverified", step_dir, checksums.CHECKSUMS)
  return state, None


def restore(manager: ocp.CheckpointManager, abstract_state: Any,
            data_iter: Optional[grain.DatasetIterator] = None):
  """Restores the newest usable step onto the shardings carried by `abstract_state`.

  A step whose checksums do not match, that does not restore, or whose arrays are not finite
  is moved aside (STEP.corrupt) with a warning, and the next older one is tried.

  Args:
    manager: the checkpoint manager.
    abstract_state: a tree of jax.ShapeDtypeStruct with `sharding` set for the current mesh.
    data_iter: if given, its position is restored in place.

  Returns:
    (step, state) or (None, None) when there is no checkpoint.

  Raises:
    ValueError: there are checkpoints but none is usable (naming each and why).
  """
  tried = []
  for step in sorted(manager.all_steps(), reverse=True):
    state, problem = _restore_one(manager, step, abstract_state, data_iter)
    if problem is None:
      if tried:
        logging.warning("Resuming from step %d, the newest usable checkpoint.", step)
      return step, state
    step_dir = os.path.join(str(manager.directory), str(step))
    moved = _quarantine(step_dir)
    logging.warning("checkpoint step %d is unusable: %s; moved it to %s and trying an older "
                    "step", step, problem, moved)
    tried.append(f"step {step}: {problem}")
    manager.reload()
  if tried:
    raise ValueError(f"{manager.directory}: no usable checkpoint ({'; '.join(tried)}); the "
                     f"bad steps were moved to *{CORRUPT_SUFFIX}, nothing was deleted")
  return None, None


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """Attaches shardings to a tree of ShapeDtypeStructs (the restore target)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_tree, shardings)
