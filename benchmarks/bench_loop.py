r"""Training-loop overhead: train.py's steps/s against the bare compiled step, in one process.

  python benchmarks/bench_loop.py --config configs/demo.py [--steps 60] [--batch B]

Runs `training.loop.train_and_evaluate` (the loop `python -m avflow_jax.train` runs: input
pipeline with its device prefetch, the finite check one step behind, logging, TensorBoard,
progress bar; checkpoints and validation only at the end) for --steps steps on synthetic
shards, with a random-weight head VAE, and reads its logged steps/s after the first window
(compilation). The bare step is the same compiled program alone (`common.TrainProgram`, the
state and 16 distinct batches already on the devices), --steps steps dispatched back to back, timed
before and after the loop (the machine's speed drifts; their mean is the reference). The ratio
is the fraction of the bare step's rate the loop keeps: the input pipeline and logging are
hidden when it is near 1.

Prints progress lines, then as its last line one JSON object.
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import common  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from avflow_jax.core import run_dir  # pylint: disable=wrong-import-position
from avflow_jax.training import loop  # pylint: disable=wrong-import-position
from avflow_jax.training import random_init  # pylint: disable=wrong-import-position
from data_prep import synthetic  # pylint: disable=wrong-import-position


def loop_rate(config, workdir: str) -> list:
  """steps/s of every logged window of a training run of `config` into `workdir`."""
  loop.train_and_evaluate(config, workdir)
  rates = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "steps_per_s" in row:
        rates.append(float(row["steps_per_s"]))
  return rates


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="configs/demo.py")
  ap.add_argument("--steps", type=int, default=60)
  ap.add_argument("--log-every", type=int, default=10)
  ap.add_argument("--batch", type=int, default=None, help="override config.batch_size")
  args = ap.parse_args()
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  config = common.load_config(args.config)
  if args.batch:
    config.batch_size = args.batch
  with tempfile.TemporaryDirectory() as root:
    data_dir = synthetic.write_synthetic_shards(
        os.path.join(root, "shards"), n_train=16, n_val=2,
        frames=config.data.crop_frames * 3, participant=bool(config.data.participant))
    vae_run = random_init.init_workdir(config, os.path.join(root, "random"), data_dir)
    config.data.dir = data_dir
    config.head_vae.workdir = os.path.join(vae_run, run_dir.HEAD_VAE_DIR)
    config.num_steps, config.log_every = args.steps, args.log_every
    config.eval_every, config.ckpt_every = 0, args.steps
    config.compilation_cache_dir = ""
    prog = common.TrainProgram(config, data_dir)
    staged = prog.staged_batches(min(args.steps, 16))
    bare_before = prog.time_chain(args.steps, staged)
    rates = loop_rate(config, os.path.join(root, "run"))
    bare_after = prog.time_chain(args.steps, staged)
  steady = rates[1:] or rates
  loop_steps_per_s = float(np.median(steady))
  bare = (bare_before + bare_after) / 2
  print(f"loop: {loop_steps_per_s:.3f} steps/s (windows {[round(r, 3) for r in rates]}); bare "
        f"step {1 / bare_before:.3f} before, {1 / bare_after:.3f} after; the loop keeps "
        f"{loop_steps_per_s * bare:.1%}", flush=True)
  result = {"config": args.config, "batch": config.batch_size,
            "crop_frames": config.data.crop_frames, "steps": args.steps,
            "loop_steps_per_s": loop_steps_per_s, "bare_step_s": bare,
            "bare_steps_per_s_before": 1 / bare_before, "bare_steps_per_s_after": 1 / bare_after,
            "loop_over_bare": loop_steps_per_s * bare, "windows": rates}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
