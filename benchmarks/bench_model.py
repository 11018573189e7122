r"""Times a training step and sampling for a model config, after compilation.

  python benchmarks/bench_model.py --config configs/base.py [--dtype bfloat16]

Prints progress lines, then as its last line one JSON object with params, train_step_s,
train_frames_per_s, sample_20s_s, sample_60s_s, the 60 s / 20 s ratio, model FLOPs
utilisation inputs and the device.
"""

import argparse
import importlib.util
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax
import jax.numpy as jnp
import numpy as np
import optax

from avflow_jax.core import constants
from avflow_jax.core import flow
from avflow_jax.inference import sampling
from avflow_jax.models import dit
from avflow_jax.models import head_vae
from avflow_jax.training import tasks


def load_config(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def timeit(fn, repeats):
  fn()  # Compile / warm up.
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="configs/base.py")
  ap.add_argument("--dtype", default=None, help="override config.model.dtype")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--frames", type=int, default=345)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--skip-60s", action="store_true")
  args = ap.parse_args()
  config = load_config(args.config)
  if args.dtype:
    config.model.dtype = args.dtype
  vis, aud, cond = constants.FACE_DIM + constants.HEAD_LATENT_DIM, constants.N_MELS, 29
  model = dit.make_av_model(config.model, visual_dim=vis, audio_dim=aud)
  rng = jax.random.PRNGKey(0)
  b, t = args.batch, args.frames
  params = nn.unbox(model.init(rng, jnp.zeros((1, t, vis)), jnp.zeros((1, t, aud)),
                               jnp.zeros((1, t, cond)), jnp.zeros((1,)))["params"])
  n_params = sum(x.size for x in jax.tree.leaves(params))
  print(f"params {n_params:,}  device {jax.devices()[0].device_kind}", flush=True)

  tx = optax.adamw(1e-4, b1=0.9, b2=0.98, weight_decay=0.0)
  opt_state = tx.init(params)
  batch = {"v": jax.random.normal(rng, (b, t, vis)), "a": jax.random.normal(rng, (b, t, aud)),
           "c": jax.random.normal(rng, (b, t, cond))}

  @jax.jit
  def train_step(params, opt_state, batch, rng):
    def loss_fn(p):
      k1, k2, k3 = jax.random.split(rng, 3)
      tt = flow.sample_time(k1, b)
      x0v, x0a = jax.random.normal(k2, batch["v"].shape), jax.random.normal(k3, batch["a"].shape)
      vv, va = model.apply({"params": p}, flow.interpolate(x0v, batch["v"], tt),
                           flow.interpolate(x0a, batch["a"], tt), batch["c"], tt)
      return (flow.masked_l1(vv, flow.velocity_target(x0v, batch["v"]))
              + 3 * flow.masked_l1(va, flow.velocity_target(x0a, batch["a"])))
    loss, g = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  def run_train():
    out = train_step(params, opt_state, batch, rng)
    jax.block_until_ready(out)

  t0 = time.perf_counter()
  run_train()
  compile_train = time.perf_counter() - t0
  train_s = timeit(run_train, args.repeats)
  print(f"train step {train_s:.3f} s (compile {compile_train:.1f} s)", flush=True)

  vae = head_vae.HeadVAE(input_dim=7)
  vae_params = vae.init(rng, jnp.zeros((1, 8, 7)))["params"]
  stats = {k: (jnp.zeros(d), jnp.ones(d)) for k, d in
           (("tokens", cond), ("mel", aud), ("face", constants.FACE_DIM), ("head", 7))}
  sp = {"av": params, "head_vae": vae_params, "stats": stats}

  def sample_seconds(seconds):
    frames = int(round(seconds * constants.FRAME_RATE))
    tokens = jax.random.normal(rng, (1, frames, cond))
    fn = lambda: jax.block_until_ready(sampling.sample(
        model, vae, sp, tokens, rng, num_steps=config.sample.num_steps))
    return timeit(fn, max(1, args.repeats - 1))

  s20 = sample_seconds(20.0)
  print(f"sample 20 s: {s20:.3f} s", flush=True)
  s60 = None if args.skip_60s else sample_seconds(60.0)
  if s60 is not None:
    print(f"sample 60 s: {s60:.3f} s (ratio {s60 / s20:.2f})", flush=True)

  fwd_flops = tasks.av_forward_flops(config, vis, aud, cond, t)
  train_flops = 3 * fwd_flops * b
  result = {
      "config": args.config, "dtype": config.model.dtype, "params": n_params,
      "train_batch": b, "train_frames": t, "train_step_s": train_s,
      "train_frames_per_s": b * t / train_s, "train_compile_s": compile_train,
      "train_tflops_per_s": train_flops / train_s / 1e12,
      "sample_20s_s": s20, "sample_60s_s": s60,
      "sample_60s_over_20s": (s60 / s20) if s60 else None,
      "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
      "jax": jax.__version__,
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
