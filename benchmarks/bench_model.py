r"""Times the train step `train.py` runs and the sampler `sample` runs, for a model config.

  python benchmarks/bench_model.py --config configs/base.py [--dtype bfloat16] [--batch 4]

The train step is `training.loop.jit_steps`' program (loss with masks and the frozen head-VAE
encode, AdamW, EMA, the finite guard, state donation) on a batch from the task's own input
pipeline over synthetic shards (`data_prep.synthetic`); the head VAE has random weights. The
sampler is `api.Avatar.sample_motion` on a random-weight run (`training.random_init`), i.e.
what `python -m avflow_jax.sample` calls (the vocoder excluded). FLOPs per train step come from
the compiled program's cost analysis.

Prints progress lines, then as its last line one JSON object.
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from avflow_jax import api  # pylint: disable=wrong-import-position
from avflow_jax.core import constants  # pylint: disable=wrong-import-position
from avflow_jax.core import sharding  # pylint: disable=wrong-import-position
from avflow_jax.data import manifest as manifest_lib  # pylint: disable=wrong-import-position
from avflow_jax.data import rows as rows_lib  # pylint: disable=wrong-import-position
from avflow_jax.models import head_vae  # pylint: disable=wrong-import-position
from avflow_jax.training import head_vae_recipe  # pylint: disable=wrong-import-position
from avflow_jax.training import loop  # pylint: disable=wrong-import-position
from avflow_jax.training import optim  # pylint: disable=wrong-import-position
from avflow_jax.training import random_init  # pylint: disable=wrong-import-position
from avflow_jax.training import tasks  # pylint: disable=wrong-import-position
from data_prep import synthetic  # pylint: disable=wrong-import-position


def load_config(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def median_time(fn, repeats):
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def time_train_step(config, data_dir, repeats):
  """(seconds per step, compile seconds, FLOPs per step, params) of the loop's train step."""
  manifest = manifest_lib.load_manifest(data_dir)
  vae_cfg = head_vae_recipe.for_av_run(config)
  vae = head_vae.from_config(vae_cfg, manifest["dims"]["head"])
  vae_params = jax.device_get(vae.init(jax.random.PRNGKey(1),
                                       jnp.zeros((1, 8, manifest["dims"]["head"])))["params"])
  task = tasks.build_av_task(config, manifest, data_dir, vae, vae_params)
  tx, schedule = optim.make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh)
  init_fn, state_sh, abstract = loop.make_train_state(task, tx, mesh, jax.random.PRNGKey(0),
                                                      config.mesh.rules)
  train_step, _ = loop.jit_steps(task, tx, schedule, config, mesh, state_sh)
  rows = rows_lib.process_rows(config.batch_size, sharding.batch_sharding(mesh))
  batch = sharding.global_batch(next(iter(task.make_dataset("train", 0, rows))), mesh)
  state = init_fn(jax.random.PRNGKey(0))
  t0 = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0
  holder = [state]

  def step():  # The compiled program itself: calling the jit again would compile it twice.
    holder[0], metrics = compiled(holder[0], batch)
    jax.block_until_ready(metrics)

  step()  # Warm up (first dispatch).
  params = sum(x.size for x in jax.tree.leaves(abstract["params"]))
  return median_time(step, repeats), compile_s, flops, params


def time_sampling(config, data_dir, seconds_list, repeats, root):
  """{seconds: sampling time} of Avatar.sample_motion (8 Euler steps) on random weights."""
  workdir = random_init.init_workdir(config, os.path.join(root, "run"), data_dir)
  avatar = api.Avatar.load(workdir)
  out = {}
  rng = np.random.default_rng(0)
  for seconds in seconds_list:
    frames = int(round(seconds * constants.FRAME_RATE))
    tokens = rng.normal(size=(frames, constants.TOKEN_DIM)).astype(np.float32)
    participant = avatar.neutral_participant(frames) if avatar.loaded.uses_participant else None
    fn = lambda: avatar.sample_motion(tokens, seed=0, num_steps=8, participant=participant)
    fn()  # Compile this length's bucket.
    out[seconds] = median_time(fn, max(1, repeats - 1))
  return out


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="configs/base.py")
  ap.add_argument("--dtype", default=None, help="override config.model.dtype")
  ap.add_argument("--batch", type=int, default=4, help="global batch of the train step")
  ap.add_argument("--frames", type=int, default=345, help="crop length of the train step")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--skip-60s", action="store_true")
  args = ap.parse_args()
  config = load_config(args.config)
  config.model.dtype = args.dtype or config.model.dtype
  config.batch_size, config.data.crop_frames = args.batch, args.frames
  config.data.cache_mb = 0
  with tempfile.TemporaryDirectory() as root:
    data_dir = synthetic.write_synthetic_shards(
        os.path.join(root, "shards"), n_train=max(4, args.batch), n_val=1,
        frames=args.frames + 8, participant=bool(config.data.participant))
    train_s, compile_s, flops, n_params = time_train_step(config, data_dir, args.repeats)
    print(f"params {n_params:,}  device {jax.devices()[0].device_kind}", flush=True)
    print(f"train step {train_s:.3f} s (compile {compile_s:.1f} s, "
          f"{flops / 1e9:.1f} GFLOP)", flush=True)
    seconds = (20.0,) if args.skip_60s else (20.0, 60.0)
    samples = time_sampling(config, data_dir, seconds, args.repeats, root)
  s20, s60 = samples[20.0], samples.get(60.0)
  print(f"sample 20 s: {s20:.3f} s" + (f", 60 s: {s60:.3f} s (ratio {s60 / s20:.2f})"
                                       if s60 else ""), flush=True)
  result = {
      "config": args.config, "dtype": config.model.dtype, "params": n_params,
      "train_batch": args.batch, "train_frames": args.frames, "train_step_s": train_s,
      "train_frames_per_s": args.batch * args.frames / train_s, "train_compile_s": compile_s,
      "train_flops_per_step": flops, "train_tflops_per_s": flops / train_s / 1e12,
      "sample_20s_s": s20, "sample_60s_s": s60,
      "sample_60s_over_20s": (s60 / s20) if s60 else None,
      "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
      "jax": jax.__version__,
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
