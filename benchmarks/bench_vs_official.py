r"""avflow_jax against the official PyTorch AV-Flow on this machine, in one run.

  python benchmarks/bench_vs_official.py --official /path/to/av_flow [--config configs/base.py]

`--official` is a checkout of github:facebookresearch/av_flow (fetched outside CI); its network
(`models/diffusion.py`) is imported from there at run time, as in bench_official_training.py.
Both sides get the config's sizes, float32, batch --batch x 345 frames and the same batch from
avflow_jax's input pipeline (synthetic shards):

  train step   avflow_jax: train.py's compiled step (`common.TrainProgram`: loss, masks, head-VAE
               encode, AdamW, EMA, finite guard, donation). Official: its model's forward, the
               flow-matching L1 loss as its trainer writes it, backward and torch's AdamW (the
               update of bench_official_training.TorchRecipe: clip, schedule, EMA).
  sample 20 s  avflow_jax: `Avatar.sample_motion` (8 Euler steps, head-VAE decode, buckets).
               Official: its trainer's Euler solver (8 steps of the wrapped model under no_grad)
               on 1,722 frames, batch 1; its head-VAE decode is not counted.

FLOPs are XLA's cost analysis of avflow_jax's programs (the official dense attention does more
work for the same result; its useful FLOPs are taken to be the same). Each side's fraction of
peak is against a 2048^3 float32 matmul measured in this run with its own framework. Thread
counts: both frameworks use every core (torch.get_num_threads()).

Prints progress lines, then as its last line one JSON object.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import bench_model  # pylint: disable=wrong-import-position
import bench_official_training as bot  # pylint: disable=wrong-import-position
import common  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position

from avflow_jax.core import constants  # pylint: disable=wrong-import-position
from avflow_jax.data import crops  # pylint: disable=wrong-import-position
from avflow_jax.data import manifest as manifest_lib  # pylint: disable=wrong-import-position
from avflow_jax.models import av_config
from avflow_jax.models import dit  # pylint: disable=wrong-import-position
from avflow_jax.models import head_vae  # pylint: disable=wrong-import-position
from avflow_jax.training import head_vae_recipe  # pylint: disable=wrong-import-position
from avflow_jax.training import optim  # pylint: disable=wrong-import-position
from data_prep import synthetic  # pylint: disable=wrong-import-position


def torch_matmul_tflops(n: int = 2048, repeats: int = 5) -> float:
  a = torch.randn(n, n)
  a @ a
  return 2 * n ** 3 / common.median_time(lambda: a @ a, repeats) / 1e12


def sample_flops(config, frames: int, dims: av_config.AVDims) -> float:
  """XLA's FLOPs of 8 network evaluations on `frames` frames (batch 1), the sampler's work."""
  model = dit.make_av_model(config.model, dims)
  params = jax.eval_shape(lambda: dit.init_av_params(model, dims, jax.random.PRNGKey(0)))
  x = lambda d: jax.ShapeDtypeStruct((1, frames, d), np.float32)
  fwd = jax.jit(lambda p, v, a, c, t: model.apply({"params": p}, v, a, c, t))
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  compiled = fwd.lower(nn.unbox(params), x(dims.visual), x(dims.audio), x(dims.cond),
                       jax.ShapeDtypeStruct((1,), np.float32)).compile()
  return 8 * common.cost_flops(compiled)


def time_official(diffusion, config, batch: dict, dims: av_config.AVDims, repeats: int,
                  sample_frames: int) -> dict:
  """(train step s, sample 20 s s) of the official network with avflow_jax's recipe."""
  model = bot.build_torch_model(diffusion, config, dims)
  _, schedule = optim.make_optimizer(config)
  recipe = bot.TorchRecipe(model, config, schedule)
  rng = np.random.default_rng(0)
  b, t = batch["mel"].shape[:2]
  latent = rng.normal(size=(b, t, dims.head_latent)).astype(np.float32)
  draws = (rng.uniform(size=(b,)).astype(np.float32),
           rng.normal(size=(b, t, dims.visual)).astype(np.float32),
           rng.normal(size=(b, t, dims.audio)).astype(np.float32))
  step_i = [0]

  def train_step():
    model.train()
    loss, _ = bot.torch_loss(model, batch, latent, draws, config, dims.face)
    recipe.step(loss, step_i[0])
    step_i[0] += 1

  train_step()  # Warm up (allocator, first backward).
  train_s = common.median_time(train_step, repeats)
  tokens = torch.from_numpy(rng.normal(size=(1, sample_frames, constants.TOKEN_DIM))
                            .astype(np.float32))
  x0 = torch.randn(1, sample_frames, dims.visual + dims.audio)

  def sample():
    model.eval()
    with torch.no_grad():
      x, t0 = x0, 0.0
      for tau in torch.linspace(0, 1, 9)[1:]:
        x = x + (tau - t0) * model(x, torch.full((1,), t0), tokens, None)
        t0 = tau

  sample()
  return {"train_step_s": train_s, "sample_20s_s": common.median_time(sample, max(1, repeats - 1))}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--official", required=True, help="checkout of facebookresearch/av_flow")
  ap.add_argument("--config", default="configs/base.py")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--frames", type=int, default=345)
  ap.add_argument("--repeats", type=int, default=3)
  args = ap.parse_args()
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  diffusion = bot.import_official(args.official)
  config = common.load_config(args.config)
  config.batch_size, config.data.crop_frames, config.data.cache_mb = args.batch, args.frames, 0
  config.model.dtype, config.model.attention = "float32", "blocked"
  sample_frames = int(round(20.0 * constants.FRAME_RATE))
  jax_peak, torch_peak = common.matmul_peak("float32"), torch_matmul_tflops()
  print(f"matmul 2048^3 float32: jax {jax_peak:.3f}, torch {torch_peak:.3f} TFLOP/s "
        f"({torch.get_num_threads()} torch threads)", flush=True)
  with tempfile.TemporaryDirectory() as root:
    data_dir = synthetic.write_synthetic_shards(
        os.path.join(root, "shards"), n_train=max(4, args.batch), n_val=1,
        frames=args.frames + 8, participant=bool(config.data.participant))
    manifest = manifest_lib.load_manifest(data_dir)
    prog = common.TrainProgram(config, data_dir)
    jax_train = prog.time_step(args.repeats)
    print(f"avflow_jax train step {jax_train:.3f} s", flush=True)
    jax_sample = bench_model.time_sampling(config, data_dir, (20.0,), args.repeats, root)[20.0]
    print(f"avflow_jax sample 20 s {jax_sample:.3f} s", flush=True)
    vae = head_vae.from_config(head_vae_recipe.for_av_run(config), manifest["dims"]["head"])
    dims = av_config.AVDims.from_data(manifest["dims"], vae.latent_dim, bool(config.data.participant))
    batch = jax.device_get(next(iter(crops.make_crop_dataset(
        data_dir, manifest, "train", global_batch_size=args.batch, crop=args.frames,
        streams=("mel", "tokens", "face", "head"), seed=0))))
    t0 = time.perf_counter()
    official = time_official(diffusion, config, batch, dims, args.repeats, sample_frames)
    print(f"official train step {official['train_step_s']:.3f} s, sample 20 s "
          f"{official['sample_20s_s']:.3f} s ({time.perf_counter() - t0:.0f} s)", flush=True)
    s_flops = sample_flops(config, sample_frames, dims)
  result = {
      "config": args.config, "batch": args.batch, "frames": args.frames,
      "jax_matmul_tflops": jax_peak, "torch_matmul_tflops": torch_peak,
      "torch_threads": torch.get_num_threads(), "train_flops": prog.flops,
      "sample_20s_flops": s_flops,
      "jax_train_step_s": jax_train, "official_train_step_s": official["train_step_s"],
      "jax_sample_20s_s": jax_sample, "official_sample_20s_s": official["sample_20s_s"],
      "train_official_over_jax": official["train_step_s"] / jax_train,
      "sample_official_over_jax": official["sample_20s_s"] / jax_sample,
      "jax_train_peak_fraction": prog.flops / jax_train / 1e12 / jax_peak,
      "official_train_peak_fraction": prog.flops / official["train_step_s"] / 1e12 / torch_peak,
      "jax_sample_peak_fraction": s_flops / jax_sample / 1e12 / jax_peak,
      "official_sample_peak_fraction": s_flops / official["sample_20s_s"] / 1e12 / torch_peak,
      "torch": torch.__version__, "jax": jax.__version__,
  }
  print(json.dumps(result))


if __name__ == "__main__":
  main()
