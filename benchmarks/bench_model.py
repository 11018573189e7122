r"""Times the train step `train.py` runs and the sampler `sample` runs, for a model config.

  python benchmarks/bench_model.py --config configs/base.py [--dtype bfloat16] [--batch 4]
      [--attention blocked] [--scan-layers] [--remat none] [--memory 16,64,256]

The train step is `training.loop.jit_steps`' program (loss with masks and the frozen head-VAE
encode, AdamW, EMA, the finite guard, state donation) on a batch from the task's own input
pipeline over synthetic shards (`data_prep.synthetic`); the head VAE has random weights. The
sampler is `api.Avatar.sample_motion` on a random-weight run (`training.random_init`), i.e.
what `python -m avflow_jax.sample` calls (the vocoder excluded). FLOPs per train step come from
the compiled program's cost analysis; utilisation is achieved FLOP/s over the device's peak
(`common.PEAK_TFLOPS` for GPUs and TPUs; on a CPU a matmul measured in the same run). With
--memory, the compiled step's per-device memory (XLA's memory analysis) at those per-device
batches, with and without remat, compiled only (nothing runs).

Prints progress lines, then as its last line one JSON object.
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import common  # pylint: disable=wrong-import-position
import flax.linen as nn  # pylint: disable=wrong-import-position
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from avflow_jax import api  # pylint: disable=wrong-import-position
from avflow_jax.core import constants  # pylint: disable=wrong-import-position
from avflow_jax.data import manifest as manifest_lib  # pylint: disable=wrong-import-position
from avflow_jax.models import attention  # pylint: disable=wrong-import-position
from avflow_jax.models import av_config
from avflow_jax.models import dit  # pylint: disable=wrong-import-position
from avflow_jax.models import head_vae  # pylint: disable=wrong-import-position
from avflow_jax.training import head_vae_recipe  # pylint: disable=wrong-import-position
from avflow_jax.training import random_init  # pylint: disable=wrong-import-position
from data_prep import synthetic  # pylint: disable=wrong-import-position

load_config = common.load_config
median_time = common.median_time


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


def residual_bytes(config, dims, batch: int, frames: int, policy: str) -> int:
  """Bytes the AV network saves for its backward pass under remat `policy` (traced, not run).

  XLA:CPU's scheduler moves rematerialised work early, so its memory analysis does not show
  what remat saves on a GPU or TPU; the residuals JAX keeps for the backward pass do.
  """
  from jax._src import ad_checkpoint  # pylint: disable=g-import-not-at-top  (no public API)
  c = config.copy_and_resolve_references()
  c.model.remat = policy
  model = dit.make_av_model(c.model, dims)
  params = nn.unbox(jax.eval_shape(lambda: dit.init_av_params(model, dims,
                                                              jax.random.PRNGKey(0))))
  x = lambda d: jax.ShapeDtypeStruct((batch, frames, d), np.float32)
  loss = lambda p, v, a, cond, t: sum(jnp.mean(o) for o in model.apply({"params": p}, v, a,
                                                                          cond, t))
  saved = ad_checkpoint.saved_residuals(loss, params, x(dims.visual), x(dims.audio),
                                        x(dims.cond), jax.ShapeDtypeStruct((batch,), np.float32))
  return int(sum(np.prod(a.shape) * a.dtype.itemsize for a, why in saved
                 if "from the argument" not in why))


def memory_plan(config, data_dir, batches, policies) -> list:
  """Per-device memory of the compiled train step at each per-device batch and remat policy.

  `xla` is the compiled step's memory analysis (remat none); `estimate` replaces its saved
  activations by those each policy keeps (`residual_bytes`).
  """
  out = []
  n = jax.device_count()
  manifest = manifest_lib.load_manifest(data_dir)
  vae = head_vae.from_config(head_vae_recipe.for_av_run(config), manifest["dims"]["head"])
  dims = av_config.AVDims.from_data(manifest["dims"], vae.latent_dim, bool(config.data.participant))
  for per_device in batches:
    c = config.copy_and_resolve_references()
    c.batch_size, c.model.remat = per_device * n, "none"
    xla = common.TrainProgram(c, data_dir, compile_only=True).memory
    base = residual_bytes(config, dims, per_device, config.data.crop_frames, "none")
    for policy in policies:
      kept = residual_bytes(config, dims, per_device, config.data.crop_frames, policy)
      row = {"batch_per_device": per_device, "remat": policy, "residual_bytes": kept,
             "xla_peak_no_remat": xla.get("peak", 0), "xla": xla,
             "peak": xla.get("peak", 0) - base + kept}
      print(f"memory: batch {per_device}/device, remat {policy}: {row['peak'] / 2**30:.2f} GiB "
            f"(activations kept {kept / 2**30:.2f} GiB; XLA, no remat, "
            f"{row['xla_peak_no_remat'] / 2**30:.2f} GiB)", flush=True)
      out.append(row)
  return out


def largest_batch(plan: list, policy: str, capacity_gib: float) -> int:
  """Largest per-device batch whose peak fits `capacity_gib`, extrapolated linearly in batch."""
  rows = sorted((r["batch_per_device"], r["peak"]) for r in plan if r["remat"] == policy)
  (b0, m0), (b1, m1) = rows[0], rows[-1]
  per_example = (m1 - m0) / (b1 - b0)
  return int((capacity_gib * 2**30 - (m0 - per_example * b0)) // per_example)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="configs/base.py")
  ap.add_argument("--dtype", default=None, help="override config.model.dtype")
  ap.add_argument("--batch", type=int, default=4, help="global batch of the train step")
  ap.add_argument("--frames", type=int, default=345, help="crop length of the train step")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--attention", default=None, help="override config.model.attention")
  ap.add_argument("--scan-layers", action="store_true", help="config.model.scan_layers=True")
  ap.add_argument("--remat", default=None, help="override config.model.remat")
  ap.add_argument("--skip-60s", action="store_true")
  ap.add_argument("--skip-sampling", action="store_true")
  ap.add_argument("--memory", default="", help="per-device batches for the memory plan, "
                  "e.g. 16,64,256 (compiled, not run)")
  args = ap.parse_args()
  config = load_config(args.config)
  config.model.dtype = args.dtype or config.model.dtype
  config.model.attention = args.attention or config.model.attention
  config.model.remat = args.remat or config.model.remat
  config.model.scan_layers = bool(args.scan_layers or config.model.scan_layers)
  config.batch_size, config.data.crop_frames = args.batch, args.frames
  config.data.cache_mb = 0
  impl = attention.resolve_implementation(config.model.attention, config.model.dtype,
                                          config.model.d_model // config.model.num_heads)
  peak, peak_source = common.peak_tflops(config.model.dtype)
  with tempfile.TemporaryDirectory() as root:
    data_dir = synthetic.write_synthetic_shards(
        os.path.join(root, "shards"), n_train=max(4, min(args.batch, 64)), n_val=1,
        frames=args.frames + 8, participant=bool(config.data.participant))
    prog = common.TrainProgram(config, data_dir)
    train_s = prog.time_step(args.repeats)
    flops = prog.flops
    print(f"params {prog.params:,}  device {jax.devices()[0].device_kind}  attention {impl}",
          flush=True)
    achieved = flops / train_s / 1e12
    print(f"train step {train_s:.3f} s (compile {prog.compile_s:.1f} s, {flops / 1e9:.1f} GFLOP, "
          f"{achieved:.2f} TFLOP/s = {achieved / peak:.1%} of {peak:.2f} [{peak_source}])",
          flush=True)
    samples = {}
    if not args.skip_sampling:
      seconds = (20.0,) if args.skip_60s else (20.0, 60.0)
      samples = time_sampling(config, data_dir, seconds, args.repeats, root)
    plan = []
    if args.memory:
      batches = [int(b) for b in args.memory.split(",")]
      plan = memory_plan(config, data_dir, batches,
                         ["none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable"])
  s20, s60 = samples.get(20.0), samples.get(60.0)
  if s20:
    print(f"sample 20 s: {s20:.3f} s" + (f", 60 s: {s60:.3f} s (ratio {s60 / s20:.2f})"
                                         if s60 else ""), flush=True)
  result = {
      "config": args.config, "dtype": config.model.dtype, "attention": impl,
      "scan_layers": config.model.scan_layers, "remat": config.model.remat,
      "params": prog.params, "train_batch": args.batch, "train_frames": args.frames,
      "train_step_s": train_s, "train_frames_per_s": args.batch * args.frames / train_s,
      "train_compile_s": prog.compile_s, "train_flops_per_step": flops,
      "train_tflops_per_s": achieved, "peak_tflops": peak, "peak_source": peak_source,
      "utilisation": achieved / peak, "train_memory": prog.memory,
      "sample_20s_s": s20, "sample_60s_s": s60,
      "sample_60s_over_20s": (s60 / s20) if s60 and s20 else None,
      "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
      "jax": jax.__version__,
  }
  if plan:
    result["memory_plan"] = plan
    result["largest_batch_per_device"] = {
        f"{gib}GiB_{policy}": largest_batch(plan, policy, gib)
        for gib in (80, 141) for policy in ("none", "full", "dots_saveable",
                                            "dots_with_no_batch_dims_saveable")}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
