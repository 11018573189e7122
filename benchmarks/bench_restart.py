r"""Restart-to-first-step time of `python -m avflow_jax.train`, with and without the persistent
compilation cache.

  python benchmarks/bench_restart.py --config configs/demo.py --data-dir DIR

Trains one step into a fresh workdir (warming the cache), then restarts the same run for one more
step three ways: cache off, cache on (warm). The time measured is from process start to the end of
the first step after the restore (process wall time of a one-step resume). Last line: JSON.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, workdir, steps, cache):
  cmd = [sys.executable, "-m", "avflow_jax.train", "--config", args.config, "--workdir", workdir,
         f"--config.num_steps={steps}", "--config.log_every=1", "--config.ckpt_every=1",
         f"--config.compilation_cache_dir={cache}", "--config.eval_every=0"]
  if args.data_dir:
    cmd.append(f"--config.data.dir={args.data_dir}")
  if args.head_vae:
    cmd.append(f"--config.head_vae.workdir={args.head_vae}")
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
  if proc.returncode:
    sys.exit(f"training failed:\n{proc.stderr[-3000:]}")
  return time.perf_counter() - t0


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="configs/demo.py")
  ap.add_argument("--data-dir", default=None)
  ap.add_argument("--head-vae", default=None, help="a trained head-VAE workdir (av task)")
  args = ap.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "cache")
    workdir = os.path.join(tmp, "run")
    first = run(args, workdir, 1, cache)  # Fresh run: compiles, fills the cache.
    print(f"first run (1 step, cold cache): {first:.1f} s", flush=True)
    no_cache = run(args, workdir, 2, "")
    print(f"restart without cache: {no_cache:.1f} s", flush=True)
    with_cache = run(args, workdir, 3, cache)
    print(f"restart with warm cache: {with_cache:.1f} s", flush=True)
  print(json.dumps({"config": args.config, "first_run_s": first,
                    "restart_no_cache_s": no_cache, "restart_warm_cache_s": with_cache}))


if __name__ == "__main__":
  main()
