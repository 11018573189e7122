r"""The accelerator check `benchmarks/gpu_check.sh` runs: every figure of issue 13 in one process.

  python benchmarks/gpu_check.py --out DIR [--dry-run] [--budget-s 420]

On the device (base config, bf16 compute): train.py's step at batch 16 and 256 x 345 for each
attention implementation (step time, frames/s, FLOPs, utilisation against the datasheet peak,
peak device memory, compile time), sampling 20 s and 60 s at batch 1 and 64, text -> AV for
20 s (text-to-tokens with random weights scaled to 20 s, then the AV sampler), the streaming
sampler in exact mode (compute per pushed 0.5 s chunk: issue 15's 10 ms), and the input
pipeline with 0 and more Grain workers. `--dry-run` takes the same path on the CPU with the tiny
config, short crops and small batches, in about a minute: a test runs it so the script cannot
rot. Each stage runs only while the time budget lasts (a skipped stage says so) and a stage that
fails records its error and the rest go on. Writes DIR/gpu_check.json and DIR/gpu_check.md (a
table ready for BENCHMARKS.md), and prints the JSON as its last line.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import common  # pylint: disable=wrong-import-position
import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FULL = dict(config="configs/base.py", dtype="bfloat16", frames=345, batches=(16, 256),
            sample_seconds=(20.0, 60.0), sample_batches=(1, 64), t2t_seconds=20.0,
            t2t_config="configs/text_to_tokens.py", calibration_n=2048,
            workers=(0, 4, 8), corpus_mb=1024, input_seconds=6.0, repeats=10,
            stream_chunks=40)
DRY = dict(config="configs/tiny.py", dtype="bfloat16", frames=48, batches=(8,),
           sample_seconds=(2.0,), sample_batches=(1, 2), t2t_seconds=2.0,
           t2t_config="configs/text_to_tokens.py:tiny", calibration_n=512,
           workers=(0, 1), corpus_mb=16, input_seconds=1.0, repeats=2, stream_chunks=6)


def _process_peak_memory() -> int:
  """Peak bytes in use on device 0 since the process started (0 where not reported): a
  running maximum over every program so far, not this program's own peak."""
  stats = jax.devices()[0].memory_stats() or {}
  return int(stats.get("peak_bytes_in_use", 0))


def train_stage(plan, data_dir) -> list:
  """train.py's step per attention implementation and batch."""
  rows = []
  peak, source = common.peak_tflops(plan["dtype"], plan["calibration_n"])  # Measured on a CPU.
  for impl in ("blocked", "dense", "cudnn"):
    for batch in plan["batches"]:
      config = common.load_config(os.path.join(ROOT, plan["config"]))
      config.model.dtype, config.model.attention = plan["dtype"], impl
      config.batch_size, config.data.crop_frames, config.data.cache_mb = batch, plan["frames"], 0
      row = {"attention": impl, "batch": batch, "frames": plan["frames"]}
      try:
        prog = common.TrainProgram(config, data_dir)
        step_s = prog.time_step(plan["repeats"])
        achieved = prog.flops / step_s / 1e12
        row.update(step_ms=1e3 * step_s, frames_per_s=batch * plan["frames"] / step_s,
                   compile_s=prog.compile_s, gflop_per_step=prog.flops / 1e9,
                   tflops=achieved, utilisation=achieved / peak, peak_tflops=peak,
                   peak_source=source, process_peak_memory_gib=_process_peak_memory() / 2**30,
                   compiled_memory_gib=prog.memory.get("peak", 0) / 2**30)
        del prog
      except Exception as e:  # pylint: disable=broad-except  (record and go on)
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
      print(f"train {impl} batch {batch}: {row}", flush=True)
      rows.append(row)
  return rows


def sample_stage(plan, data_dir, root) -> list:
  """Avatar.sample_motion (8 Euler steps) on random weights, per length and batch."""
  from avflow_jax import api  # pylint: disable=g-import-not-at-top
  from avflow_jax.core import constants  # pylint: disable=g-import-not-at-top
  from avflow_jax.training import random_init  # pylint: disable=g-import-not-at-top
  config = common.load_config(os.path.join(ROOT, plan["config"]))
  config.model.dtype = plan["dtype"]
  avatar = api.Avatar.load(random_init.init_workdir(config, os.path.join(root, "run"), data_dir))
  rows, rng = [], np.random.default_rng(0)
  for seconds in plan["sample_seconds"]:
    for batch in plan["sample_batches"]:
      frames = int(round(seconds * constants.FRAME_RATE))
      tokens = rng.normal(size=(batch, frames, constants.TOKEN_DIM)).astype(np.float32)
      fn = lambda: avatar.sample_motion(tokens, seed=0, num_steps=8)  # pylint: disable=cell-var-from-loop
      t0 = time.perf_counter()
      fn()
      first = time.perf_counter() - t0
      s = common.median_time(fn, max(2, plan["repeats"] // 2))
      row = {"seconds": seconds, "batch": batch, "frames": frames, "sample_ms": 1e3 * s,
             "compile_s": max(first - s, 0.0), "realtime_factor": seconds * batch / s}
      print(f"sample {seconds:g} s batch {batch}: {row}", flush=True)
      rows.append(row)
  return rows, avatar


def t2t_stage(plan, avatar) -> dict:
  """Text -> tokens (random weights scaled to the length) -> AV motion, compiled."""
  import bench_sample  # pylint: disable=g-import-not-at-top

  from avflow_jax.core import constants  # pylint: disable=g-import-not-at-top
  t2t = bench_sample.time_text_to_tokens(plan["t2t_seconds"],
                                         os.path.join(ROOT, plan["t2t_config"]))
  frames = t2t["t2t_frames"]
  tokens = np.zeros((frames, constants.TOKEN_DIM), np.float32)
  avatar.sample_motion(tokens, seed=0)
  t0 = time.perf_counter()
  avatar.sample_motion(tokens, seed=0)
  sample_s = time.perf_counter() - t0
  out = {k: t2t[k] for k in ("t2t_frames", "t2t_frontend_s", "t2t_s", "t2t_compile_s")}
  out.update(sample_s=sample_s, text_to_av_ms=1e3 * (t2t["t2t_frontend_s"] + t2t["t2t_s"]
                                                     + sample_s))
  print(f"text -> AV {plan['t2t_seconds']:g} s: {out}", flush=True)
  return out


def stream_stage(plan, avatar) -> dict:
  """The streaming sampler in exact mode: compute per pushed 0.5 s chunk (the issue's 10 ms)."""
  import bench_streaming  # pylint: disable=g-import-not-at-top

  from avflow_jax.core import constants  # pylint: disable=g-import-not-at-top
  push = int(round(0.5 * constants.FRAME_RATE))
  tokens = np.random.default_rng(0).normal(
      size=(push * plan["stream_chunks"], constants.TOKEN_DIM)).astype(np.float32)
  _, times, _, stream = bench_streaming.run_stream(avatar, tokens, None, push, None, 0)
  steady = times[len(times) // 2:-1]  # Past compilation and the look-ahead's fill; no close.
  out = {"push_frames": push, "lookahead_frames": stream.lookahead_frames,
         "chunk_ms": 1e3 * float(np.median(steady)), "rtf": float(np.sum(steady)) /
         (0.5 * len(steady)), "first_push_s": times[0]}
  print(f"stream: {out}", flush=True)
  return out


def input_stage(plan, data_dir, root) -> dict:
  """Crops/s of the training pipeline (no cache, frame-uniform, crop as trained) per workers."""
  import bench_input  # pylint: disable=g-import-not-at-top
  corpus = os.path.join(root, "corpus")
  info = bench_input.build_corpus(data_dir, corpus, 64, plan["corpus_mb"])
  runs = [bench_input.time_pipeline(corpus, w, 16, plan["frames"], plan["input_seconds"])
          for w in plan["workers"]]
  out = {"corpus": info, "runs": runs, **bench_input.bytes_per_crop(corpus, plan["frames"], 50)}
  print(f"input: {out}", flush=True)
  return out


def markdown(result: dict) -> str:
  """The figures as markdown tables for BENCHMARKS.md."""
  lines = [f"Device: {result['device']} ({result['num_devices']} device(s)), jax "
           f"{result['jax']}, {result['config']} in {result['dtype']}"
           f"{' (DRY RUN, CPU)' if result['dry_run'] else ''}; {result['wall_s']:.0f} s in all.",
           "", "| attention | batch × frames | step ms | frames/s | GFLOP | TFLOP/s | "
           "utilisation | step's memory GiB (XLA) | compile s |", "|---|---|---|---|---|---|---|---|---|"]
  for r in result.get("train", []):
    if "error" in r:
      lines.append(f"| {r['attention']} | {r['batch']} × {r['frames']} | error: "
                   f"{r['error'][:80]} | | | | | | |")
      continue
    lines.append(f"| {r['attention']} | {r['batch']} × {r['frames']} | {r['step_ms']:.1f} | "
                 f"{r['frames_per_s']:,.0f} | {r['gflop_per_step']:.0f} | {r['tflops']:.1f} | "
                 f"{r['utilisation']:.1%} | {r['compiled_memory_gib']:.1f} | {r['compile_s']:.1f} |")
  if result.get("sample"):
    lines += ["", "| sampling | batch | ms | × real time | compile s |", "|---|---|---|---|---|"]
    for r in result["sample"]:
      lines.append(f"| {r['seconds']:g} s | {r['batch']} | {r['sample_ms']:.1f} | "
                   f"{r['realtime_factor']:,.0f} | {r['compile_s']:.1f} |")
  if result.get("text_to_av"):
    r = result["text_to_av"]
    lines += ["", f"Text → AV, {r['t2t_frames']} frames: {r['text_to_av_ms']:.1f} ms "
              f"(front end {1e3 * r['t2t_frontend_s']:.1f} ms, text → tokens "
              f"{1e3 * r['t2t_s']:.1f} ms, AV sampler {1e3 * r['sample_s']:.1f} ms)."]
  if result.get("stream"):
    r = result["stream"]
    lines += ["", f"Streaming (exact mode, look-ahead {r['lookahead_frames']} frames): one 0.5 s "
              f"chunk {r['chunk_ms']:.1f} ms, real-time factor {r['rtf']:.3f}."]
  if result.get("input"):
    lines += ["", "| Grain workers | crops/s | crops per CPU-second |", "|---|---|---|"]
    for r in result["input"]["runs"]:
      lines.append(f"| {r['workers']} | {r['crops_per_s']:,.0f} | {r['crops_per_cpu_s']:,.0f} |")
  for name, why in result.get("skipped", {}).items():
    lines.append(f"\nSkipped {name}: {why}")
  return "\n".join(lines) + "\n"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--out", required=True, help="directory for gpu_check.json and .md")
  ap.add_argument("--dry-run", action="store_true", help="CPU, tiny config, seconds")
  ap.add_argument("--budget-s", type=float, default=420.0, help="stop starting stages after")
  args = ap.parse_args()
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  plan = DRY if args.dry_run else FULL
  if args.dry_run:  # Seconds, not minutes, of CPU compilation; the numerics are unchanged.
    jax.config.update("jax_disable_most_optimizations", True)
  t_start = time.perf_counter()
  result = {"dry_run": args.dry_run, "config": plan["config"], "dtype": plan["dtype"],
            "device": jax.devices()[0].device_kind, "num_devices": jax.device_count(),
            "jax": jax.__version__, "skipped": {}, "errors": {}}
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as root:
    data_dir = synthetic.write_synthetic_shards(os.path.join(root, "shards"), n_train=32,
                                                n_val=2, frames=plan["frames"] * 4)
    avatar = None
    stages = [("train", lambda: train_stage(plan, data_dir)),
              ("sample", lambda: sample_stage(plan, data_dir, root)),
              ("text_to_av", lambda: t2t_stage(plan, avatar)),
              ("stream", lambda: stream_stage(plan, avatar)),
              ("input", lambda: input_stage(plan, data_dir, root))]
    for name, fn in stages:
      spent = time.perf_counter() - t_start
      if spent > args.budget_s:
        result["skipped"][name] = f"time budget ({spent:.0f} s of {args.budget_s:.0f} s spent)"
        continue
      if name in ("text_to_av", "stream") and avatar is None:
        result["skipped"][name] = "no avatar (the sampling stage failed)"
        continue
      try:
        out = fn()
        if name == "sample":
          out, avatar = out
        result[name] = out
      except Exception as e:  # pylint: disable=broad-except  (record, go on with the rest)
        traceback.print_exc()
        result["errors"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
  result["wall_s"] = time.perf_counter() - t_start
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
    json.dump(result, f, indent=1)
  with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
    f.write(markdown(result))
  print(json.dumps(result))
  return 1 if result["errors"] else 0


if __name__ == "__main__":
  sys.exit(main())
