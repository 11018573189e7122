r"""Times the whole sampling CLI path (tokens -> wav, npz, mp4, png) by stage, and text -> tokens.

  python benchmarks/bench_sample.py --config configs/base.py --seconds 20   # random weights
  python benchmarks/bench_sample.py --workdir /tmp/avflow --seconds 20 \
      --vocoder-weights bigvgan.safetensors --t2t-workdir /tmp/t2t

Runs `avflow_jax.sample` in-process twice on `--seconds` of random tokens: the first (cold) run
is what a user of the CLI waits for; the second reuses the compiled sampler, so the difference
of their sampling times is the compilation. With --config, a workdir with random weights and a
manifest with plausible statistics is written first (not timed as part of the CLI path).

Prints progress lines, then as its LAST line one JSON object: device, frames, bucket, params,
import_s, load_s, compile_s, sample_s (after compilation), sample_realtime_factor, vocoder_s,
render_mux_s (preview drawing + ffmpeg encode + audio mux), plot_s, write_s (wav + npz),
total_cold_s (the CLI path with compilation), total_warm_s; and for text -> tokens (the
Matcha-style model of --t2t-config with random weights, or a trained --t2t-workdir) on a
passage of about --seconds of speech: t2t_frontend_s (cleaning + eSpeak NG + ids),
t2t_compile_s, t2t_s (durations, then the jitted synthesis with 10 Euler steps on the
256-frame bucket of the predicted length, as `api.text_to_tokens`; mean of 3 warm runs),
t2t_frames, and text_to_av_s = t2t_frontend_s + t2t_s + sample_s (text in, motion and mel
out, compiled). With random weights the predicted durations are meaningless, so they are scaled
(config.sample.length_scale) to give --seconds of output.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # common.py

_T0 = time.perf_counter()
from common import load_config  # pylint: disable=g-import-not-at-top  (benchmarks/)
import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from avflow_jax import api  # pylint: disable=g-import-not-at-top
from avflow_jax import sample  # pylint: disable=g-import-not-at-top
from avflow_jax.core import constants as C  # pylint: disable=g-import-not-at-top
from avflow_jax.inference import loading  # pylint: disable=g-import-not-at-top
from avflow_jax.training import random_init

IMPORT_S = time.perf_counter() - _T0

# About 20 s of read speech (~55 words at 165 words per minute); repeated for longer --seconds.
PASSAGE = ("The little harbour town woke slowly that morning. Fishing boats rocked against the "
           "stone pier while gulls argued over scraps. At the bakery on the corner, Maria "
           "pulled the first loaves from the oven and set them by the window, where the smell "
           "of warm bread drifted out into the quiet street and reached the sleepy sailors.")
PASSAGE_SECONDS = 20.0


def write_stats_manifest(data_dir: str, head_dim: int = 7) -> str:
  """A shard-less manifest with plausible statistics (all the sampler reads from the data)."""
  os.makedirs(data_dir, exist_ok=True)

  def stat(mean, std, n):
    return {"mean": list(np.broadcast_to(np.float64(mean), (n,)).tolist()),
            "std": list(np.broadcast_to(np.float64(std), (n,)).tolist())}

  head_mean = [1.0, 0, 0, 0, 0, 0, 0.6] if head_dim == 7 else [0.0] * head_dim
  manifest = {
      "format_version": 1, "source_format": "generic", "frame_rate": C.FRAME_RATE,
      "sample_rate": C.SAMPLE_RATE, "hop_length": C.HOP_LENGTH,
      "dims": {"mel": C.N_MELS, "tokens": C.TOKEN_DIM, "face": C.FACE_DIM, "head": head_dim,
               "participant": 0},
      "head_kind": "quat_trans" if head_dim == 7 else "a2p_4d",
      "splits": {"train": {"shards": [], "clips": [], "hours": 0.0}},
      "stats": {"mel": stat(C.MEL_MEAN, C.MEL_STD, C.N_MELS),
                "tokens": stat(C.TOKEN_MEAN, C.TOKEN_STD, C.TOKEN_DIM),
                "face": stat(0.0, 1.0, C.FACE_DIM),
                "head": {"mean": head_mean, "std": [0.05] * head_dim}},
      "face_decoder": None, "skipped": []}
  with open(os.path.join(data_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  return data_dir


def time_text_to_tokens(seconds: float, t2t_config: str, t2t_workdir=None) -> dict:
  """Times `api.text_to_tokens` on about `seconds` of speech (see the module docstring)."""
  text = " ".join([PASSAGE] * max(1, round(seconds / PASSAGE_SECONDS)))
  if t2t_workdir:
    t2t = api.load_text_to_tokens(t2t_workdir)
  else:
    from avflow_jax.models import t2t_synthesis  # pylint: disable=g-import-not-at-top
    from avflow_jax.models import text_to_tokens as t2t_lib  # pylint: disable=g-import-not-at-top
    config = load_config(t2t_config)
    model = t2t_lib.make_model(config)
    t2t = api.TextToTokensModel(t2t_config, config, model,
                                t2t_lib.init_params(model, jax.random.PRNGKey(0), 64, 64))
    # Random durations are meaningless: scale them (linear in length_scale) to fill --seconds.
    ids = api.text_ids(text, t2t)
    n1 = int(t2t_synthesis.predict_lengths(t2t.params, model, jax.numpy.asarray(ids[None]),
                                           jax.numpy.asarray([ids.size], np.int32))[0])
    config.sample.length_scale = seconds * C.FRAME_RATE / n1
  t0 = time.perf_counter()
  ids = api.text_ids(text, t2t)
  frontend_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  api.tokens_from_ids(ids, t2t)
  cold = time.perf_counter() - t0
  times = []
  for _ in range(3):
    t0 = time.perf_counter()
    tokens = api.tokens_from_ids(ids, t2t)
    times.append(time.perf_counter() - t0)
  warm = float(np.mean(times))
  n = tokens.shape[0]
  return {"t2t_symbols": int(ids.size), "t2t_frames": n, "t2t_buffer_frames": api.bucket_frames(n),
          "t2t_seconds_out": n / C.FRAME_RATE, "t2t_frontend_s": frontend_s,
          "t2t_compile_s": max(cold - warm, 0.0), "t2t_s": warm,
          "t2t_params": sum(x.size for x in jax.tree.leaves(t2t.params)),
          "t2t_source": t2t_workdir or t2t_config}


def device_description() -> str:
  d = jax.devices()[0]
  kind = getattr(d, "device_kind", d.platform)
  if d.platform == "cpu":
    return f"cpu ({kind}, {os.cpu_count()} cores visible, {jax.device_count()} device(s))"
  return f"{d.platform} ({kind}, {jax.device_count()} device(s))"


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  src = ap.add_mutually_exclusive_group()
  src.add_argument("--workdir", help="a trained AV workdir")
  src.add_argument("--config", default="configs/base.py",
                   help="model config for a random-weight workdir (when no --workdir)")
  ap.add_argument("--seconds", type=float, default=20.0, help="seconds of content")
  ap.add_argument("--steps", type=int, default=8, help="Euler steps")
  ap.add_argument("--vocoder-weights", default=None, help="BigVGAN safetensors (else Griffin-Lim)")
  ap.add_argument("--keep", default=None, help="keep the outputs in this directory")
  t2t = ap.add_mutually_exclusive_group()
  t2t.add_argument("--t2t-workdir", help="a trained text-to-tokens workdir")
  t2t.add_argument("--t2t-config", default="configs/text_to_tokens.py",
                   help="text-to-tokens config for random weights (when no --t2t-workdir)")
  ap.add_argument("--no-t2t", action="store_true", help="skip the text -> tokens timing")
  args = ap.parse_args()

  tmp = tempfile.TemporaryDirectory(prefix="bench_sample_")
  root = args.keep or tmp.name
  result = {"device": device_description(), "seconds": args.seconds, "steps": args.steps,
            "import_s": round(IMPORT_S, 3)}
  workdir = args.workdir
  if not workdir:
    t0 = time.perf_counter()
    config = load_config(args.config)
    data_dir = write_stats_manifest(os.path.join(root, "data"))
    workdir = random_init.init_workdir(config, os.path.join(root, "run"), data_dir)
    result["config"] = args.config
    result["init_workdir_s"] = round(time.perf_counter() - t0, 2)
    print(f"random-weight workdir from {args.config} in {result['init_workdir_s']} s", flush=True)
  else:
    result["workdir"] = workdir

  frames = int(args.seconds * C.FRAME_RATE)
  rng = np.random.default_rng(0)
  tokens = (C.TOKEN_MEAN + C.TOKEN_STD * rng.standard_normal((frames, C.TOKEN_DIM)))
  tokens_path = os.path.join(root, "tokens.npy")
  np.save(tokens_path, tokens.astype(np.float32))

  runs = []
  for name in ("cold", "warm"):
    argv = ["--workdir", workdir, "--tokens", tokens_path, "--output",
            os.path.join(root, "out_" + name), "--steps", str(args.steps)]
    if args.vocoder_weights:
      argv += ["--vocoder-weights", args.vocoder_weights]
    print(f"--- {name} run: python -m avflow_jax.sample {' '.join(argv)}", flush=True)
    parsed = sample.make_parser().parse_args(argv)
    runs.append(sample.run(parsed, log=lambda m: print("  " + m, flush=True))["timings"])
  cold, warm = runs
  loaded = loading.load_avatar(workdir)
  result.update(
      frames=frames, bucket=api.bucket_frames(frames),
      params=sum(x.size for x in jax.tree.leaves(loaded.params["av"])),
      vocoder="bigvgan" if args.vocoder_weights else "griffin_lim",
      load_s=cold["load"], compile_s=max(cold["sample"] - warm["sample"], 0.0),
      sample_s=warm["sample"], sample_realtime_factor=args.seconds / warm["sample"],
      vocoder_s=warm["vocoder"], render_mux_s=warm["render"], plot_s=warm["plot"],
      write_s=warm["write"], total_cold_s=cold["total"], total_warm_s=warm["total"],
      cold_vocoder_s=cold["vocoder"], cold_render_mux_s=cold["render"],
      load_average_1min=os.getloadavg()[0])  # Other processes on the box skew the times.
  if not args.no_t2t:
    print("--- text -> tokens", flush=True)
    result.update(time_text_to_tokens(args.seconds, args.t2t_config, args.t2t_workdir))
    result["text_to_av_s"] = result["t2t_frontend_s"] + result["t2t_s"] + result["sample_s"]
  result = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
