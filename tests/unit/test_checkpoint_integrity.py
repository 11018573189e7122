"""Checkpoint seals (checksums), the fallback to an older intact step, and the directory lock."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from avflow_jax.core import checkpointing
from avflow_jax.core import checksums
from avflow_jax.core import locks
from avflow_jax.core import run_dir
from avflow_jax.core.errors import AvatarError


def _state(value: float):
  return {"step": jnp.int32(value), "params": {"w": jnp.full((64, 8), value, jnp.float32)},
          "ema": {"w": jnp.full((64, 8), value, jnp.float32)}}


def _abstract():
  return checkpointing.abstract_with_shardings(
      {"step": jnp.zeros((), jnp.int32), "params": {"w": jnp.zeros((64, 8))},
       "ema": {"w": jnp.zeros((64, 8))}},
      {"step": None, "params": {"w": None}, "ema": {"w": None}})


def _save_steps(root, steps):
  manager = checkpointing.make_manager(root, keep=5, async_save=True)
  unsealed = []
  for s in steps:
    checkpointing.seal(manager, unsealed)
    assert checkpointing.save(manager, s, _state(float(s)), force=True)
    unsealed.append(s)
  checkpointing.seal(manager, unsealed)
  manager.close()


def _largest_file(step_dir):
  paths = [os.path.join(r, n) for r, _, ns in os.walk(step_dir) for n in ns
           if n != checksums.CHECKSUMS]
  return max(paths, key=os.path.getsize)


def _flip_byte(path, offset=-20):
  with open(path, "r+b") as f:
    f.seek(offset, os.SEEK_END)
    b = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([b[0] ^ 0x40]))


def test_every_saved_step_is_sealed_and_verifies(tmp_path):
  root = str(tmp_path / "ckpt")
  _save_steps(root, [1, 2])
  for s in (1, 2):
    step_dir = os.path.join(root, str(s))
    with open(os.path.join(step_dir, checksums.CHECKSUMS)) as f:
      table = json.load(f)["files"]
    assert table and all(len(v["sha256"]) == 64 for v in table.values())
    assert checksums.verify(step_dir) == (True, None)


def test_flipped_byte_falls_back_to_the_older_step_and_deletes_nothing(tmp_path):
  root = str(tmp_path / "ckpt")
  _save_steps(root, [1, 2])
  _flip_byte(_largest_file(os.path.join(root, "2")))
  sealed, problem = checksums.verify(os.path.join(root, "2"))
  assert sealed and "checksum" in problem
  manager = checkpointing.make_manager(root, keep=5, async_save=False)
  step, state = checkpointing.restore(manager, _abstract())
  assert step == 1 and float(state["params"]["w"][0, 0]) == 1.0
  # The bad step is kept beside the good one, out of orbax's sight.
  assert sorted(os.listdir(root)) == ["1", "2" + checkpointing.CORRUPT_SUFFIX]
  # Training on from step 1 can save step 2 again.
  assert checkpointing.save(manager, 2, _state(2.0), force=True)
  manager.wait_until_finished()
  manager.close()


def test_unreadable_or_nonfinite_step_falls_back(tmp_path):
  root = str(tmp_path / "ckpt")
  manager = checkpointing.make_manager(root, keep=5, async_save=False)
  checkpointing.save(manager, 1, _state(1.0), force=True)
  bad = _state(2.0)
  bad["params"]["w"] = bad["params"]["w"].at[0, 0].set(jnp.nan)
  checkpointing.save(manager, 2, bad, force=True)  # Unsealed (no checksums) and NaN.
  checkpointing.save(manager, 3, _state(3.0), force=True)
  manager.wait_until_finished()
  os.remove(_largest_file(os.path.join(root, "3")))  # Unsealed and a file missing.
  manager.close()
  manager = checkpointing.make_manager(root, keep=5, async_save=False)
  step, _ = checkpointing.restore(manager, _abstract())
  assert step == 1
  assert {"2.corrupt", "3.corrupt"} <= set(os.listdir(root))


def test_no_usable_step_is_one_error_naming_each(tmp_path):
  root = str(tmp_path / "ckpt")
  _save_steps(root, [1])
  _flip_byte(_largest_file(os.path.join(root, "1")))
  manager = checkpointing.make_manager(root, keep=5, async_save=False)
  with pytest.raises(ValueError, match="no usable checkpoint.*step 1: file .* checksum"):
    checkpointing.restore(manager, _abstract())


def test_sampling_loads_the_newest_intact_step(tmp_path):
  workdir = tmp_path / "run"
  _save_steps(str(workdir / "checkpoints"), [1, 2])
  _flip_byte(_largest_file(str(workdir / "checkpoints" / "2")))
  step, params = run_dir.load_params(str(workdir), which="ema")
  assert step == 1 and float(np.asarray(params["w"])[0, 0]) == 1.0
  _flip_byte(_largest_file(str(workdir / "checkpoints" / "1")))
  with pytest.raises(AvatarError, match="no intact checkpoint"):
    run_dir.load_params(str(workdir), which="ema")


def test_sampling_loads_a_chosen_step_and_never_swaps_a_damaged_one(tmp_path):
  workdir = tmp_path / "run"
  _save_steps(str(workdir / "checkpoints"), [1, 2, 3])
  step, params = run_dir.load_params(str(workdir), which="ema", step=2)
  assert step == 2 and float(np.asarray(params["w"])[0, 0]) == 2.0
  with pytest.raises(AvatarError, match=r"no checkpoint at step 5 \(committed steps: 1, 2, 3\)"):
    run_dir.load_params(str(workdir), which="ema", step=5)
  _flip_byte(_largest_file(str(workdir / "checkpoints" / "2")))
  with pytest.raises(AvatarError, match="step 2: file .* checksum"):
    run_dir.load_params(str(workdir), which="ema", step=2)  # Not step 1 in its place.


def test_lock_refuses_a_second_holder_and_takes_over_a_dead_ones(tmp_path):
  d = str(tmp_path / "work")
  with locks.hold(d, "--workdir", log=print):
    with pytest.raises(locks.LockedError, match=f"--workdir {d} is in use by pid {os.getpid()}"):
      with locks.hold(d, "--workdir"):
        pass
  # A process that died holding the lock (its record is still in the file) is taken over.
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  with open(os.path.join(d, locks.LOCK_NAME), "w") as f:
    json.dump({"pid": int(dead.stdout), "host": "h", "command": "train", "since": "t"}, f)
  said = []
  with locks.hold(d, "--workdir", log=said.append):
    pass
  assert len(said) == 1 and "stale lock" in said[0] and dead.stdout.strip() in said[0]
