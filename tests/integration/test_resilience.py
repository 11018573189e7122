"""Multi-host training on loopback, preemption and exact resume after SIGKILL.

Every run here is a real `python -m avflow_jax.train` process. A shared persistent compilation
cache keeps the restarts cheap.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from avflow_jax.core import errors
from avflow_jax.core import run_dir
from avflow_jax.training import loop
from configs import head_vae as head_vae_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.slow
STEPS = 10  # The reference run's length: every run here trains (or resumes) to it.


@pytest.fixture(scope="module")
def setup(tiny_shards, tmp_path_factory):
  base = tmp_path_factory.mktemp("resilience")
  vae_dir = str(base / "vae")
  cfg = head_vae_config.get_config()
  cfg.data.dir = tiny_shards
  cfg.data.crop_frames = 48
  cfg.vae.ff_dim = 64
  cfg.num_steps, cfg.ckpt_every, cfg.log_every, cfg.batch_size = 5, 5, 5, 8
  cfg.compilation_cache_dir = ""
  loop.train_and_evaluate(cfg, vae_dir)
  return {"data": tiny_shards, "vae": vae_dir, "cache": str(base / "jax_cache"), "base": base}


def _cmd(setup, workdir, steps, extra=()):
  return [sys.executable, "-m", "avflow_jax.train", "--config", "configs/tiny.py",
          "--workdir", workdir, f"--config.data.dir={setup['data']}",
          f"--config.head_vae.workdir={setup['vae']}",
          f"--config.compilation_cache_dir={setup['cache']}", f"--config.num_steps={steps}",
          "--config.log_every=1", "--config.ckpt_every=3", "--config.batch_size=4",
          *extra]


def _env(devices):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  # Compilation is most of each run's time; XLA's optimisation passes are not what is tested
  # (bitwise equality holds between runs compiled alike, and every run here is).
  env["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"
  return env


def _run(cmd, devices=4, timeout=300):
  proc = subprocess.run(cmd, cwd=ROOT, env=_env(devices), capture_output=True, text=True,
                        timeout=timeout)
  return proc


def _losses(workdir):
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      rec = json.loads(line)
      out[rec["step"]] = rec["loss"]  # A resumed run rewrites its steps; the last wins.
  return out


def _wait_for(predicate, proc, timeout=240):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if predicate():
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.02)
  return False


def _final_params(workdir):
  _, params = run_dir.load_params(workdir, which="params")
  return jax.device_get(params)


@pytest.fixture(scope="module")
def reference(setup):
  workdir = str(setup["base"] / "reference")
  proc = _run(_cmd(setup, workdir, STEPS))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def _assert_same_run(workdir, reference, from_step):
  ref_losses, losses = _losses(reference), _losses(workdir)
  for step in range(from_step + 1, STEPS + 1):
    assert losses[step] == ref_losses[step], step  # Bitwise on CPU.
  jax.tree.map(np.testing.assert_array_equal, _final_params(workdir), _final_params(reference))


def _resumed_from(stderr):
  import re
  m = re.search(r"Resumed from step (\d+)", stderr)
  return int(m.group(1)) if m else 0


@pytest.mark.parametrize("kill_at", [7])
def test_sigkill_then_restart_reproduces_the_uninterrupted_run(setup, reference, kill_at):
  workdir = str(setup["base"] / f"killed_{kill_at}")
  proc = subprocess.Popen(_cmd(setup, workdir, STEPS), cwd=ROOT, env=_env(4),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  metrics = os.path.join(workdir, "metrics.jsonl")
  reached = _wait_for(lambda: os.path.exists(metrics) and
                      max(_losses(workdir), default=0) >= kill_at, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert reached, "training did not reach the kill step"
  proc = _run(_cmd(setup, workdir, STEPS))
  assert proc.returncode == 0, proc.stderr[-3000:]
  resumed = _resumed_from(proc.stderr)
  assert resumed in (3, 6)  # The newest committed checkpoint before the kill.
  _assert_same_run(workdir, reference, resumed)


def test_sigkill_during_a_save_never_leaves_a_usable_partial_checkpoint(setup, reference):
  workdir = str(setup["base"] / "killed_in_save")
  ckpt = os.path.join(workdir, "checkpoints")
  proc = subprocess.Popen(_cmd(setup, workdir, STEPS), cwd=ROOT, env=_env(4),
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # Kill as soon as the step-6 checkpoint is being written (its temporary directory exists).
  in_save = lambda: os.path.isdir(ckpt) and any(
      d.startswith("6") and "tmp" in d for d in os.listdir(ckpt))
  caught = _wait_for(in_save, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  if caught:
    assert "6" not in os.listdir(ckpt)  # Uncommitted: not visible as a step.
  proc = _run(_cmd(setup, workdir, STEPS))
  assert proc.returncode == 0, proc.stderr[-3000:]
  resumed = _resumed_from(proc.stderr)
  if caught:
    assert resumed < 6
  _assert_same_run(workdir, reference, resumed)


def _stop_then_resume(setup, reference, name, signum):
  """Sends `signum` after step 4; returns the saved step and stderr, after resuming to the end."""
  workdir = str(setup["base"] / name)
  proc = subprocess.Popen(_cmd(setup, workdir, STEPS), cwd=ROOT, env=_env(4),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  assert _wait_for(lambda: os.path.exists(os.path.join(workdir, "metrics.jsonl")) and
                   max(_losses(workdir), default=0) >= 4, proc)
  proc.send_signal(signum)
  _, err = proc.communicate(timeout=120)
  saved = run_dir.latest_checkpoint_dir(workdir)[0]
  returncode = proc.returncode
  proc = _run(_cmd(setup, workdir, STEPS))
  assert proc.returncode == 0, proc.stderr[-3000:]
  _assert_same_run(workdir, reference, saved)
  return returncode, saved, err


def test_sigterm_saves_and_exits_75_then_resumes(setup, reference):
  code, saved, err = _stop_then_resume(setup, reference, "sigterm", signal.SIGTERM)
  assert code == errors.EXIT_PREEMPTED, err[-3000:]
  assert saved >= 4 and saved % 3 != 0  # An off-schedule checkpoint at the preemption step.


def test_ctrl_c_saves_and_exits_130_without_a_traceback_then_resumes(setup, reference):
  code, saved, err = _stop_then_resume(setup, reference, "sigint", signal.SIGINT)
  assert code == 130, err[-3000:]
  assert "Traceback" not in err and "Interrupted at step" in err
  assert saved >= 4


def test_corrupt_latest_checkpoint_falls_back_and_trains_the_same_run(setup, reference):
  """Flipped bytes in the newest step: moved aside with a warning; resumed from the one before."""
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(setup["base"] / "corrupt")
  shutil.copytree(reference, workdir)
  step_dir = os.path.join(workdir, "checkpoints", str(STEPS))
  victim = max((os.path.join(r, n) for r, _, ns in os.walk(step_dir) for n in ns
                if n != "avflow_checksums.json"), key=os.path.getsize)
  with open(victim, "r+b") as f:
    f.seek(-9, os.SEEK_END)
    b = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([b[0] ^ 0xFF]))
  with open(os.path.join(workdir, "metrics.jsonl"), "w"):
    pass  # Only the resumed steps are compared.
  proc = _run(_cmd(setup, workdir, STEPS))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"checkpoint step {STEPS} is unusable" in proc.stderr and "checksum" in proc.stderr
  assert _resumed_from(proc.stderr) == 9  # The ckpt_every=3 step before it.
  assert os.path.isdir(step_dir + ".corrupt")  # Kept, not deleted.
  _assert_same_run(workdir, reference, 9)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_process(setup, reference):
  """Two processes of 2 devices each train the one-process, 4-device reference run."""
  multi = str(setup["base"] / "multi")
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(setup, multi, STEPS, ["--coordinator_address", f"127.0.0.1:{port}",
                               "--num_processes", "2", "--process_id", str(i)]),
      cwd=ROOT, env=_env(2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  errs = [p.communicate(timeout=300)[1] for p in procs]
  for p, err in zip(procs, errs):
    assert p.returncode == 0, err[-3000:]
  assert "process 1 of 2" in errs[1]
  a, b = _losses(reference), _losses(multi)
  np.testing.assert_allclose([b[s] for s in range(1, STEPS + 1)],
                             [a[s] for s in range(1, STEPS + 1)],
                             rtol=1e-5)
  # The checkpoint both processes wrote restores in this single process, with the same params.
  # Collectives sum in another order, and Adam turns ulp-level differences of near-zero
  # gradients into updates of up to 2 * lr a step; so: nearly every element equal to 1e-5,
  # none further off than those updates can take it.
  lr = 1e-3  # configs/tiny.py
  diffs = jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(np.asarray(x) - np.asarray(y)).ravel(),
                                       _final_params(multi), _final_params(reference)))
  diff = np.concatenate(diffs)
  assert (diff <= 1e-5).mean() >= 0.999, (diff > 1e-5).sum()
  assert diff.max() <= 4 * STEPS * lr, diff.max()


def test_batch_not_divisible_is_a_clear_error_before_compiling(setup):
  proc = _run(_cmd(setup, str(setup["base"] / "bad"), 2) + ["--config.batch_size=6"])
  assert proc.returncode == 1
  assert "config.batch_size: 6 is not divisible by the 4 batch shards" in proc.stderr
