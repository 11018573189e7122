r"""Time and peak memory of importing a full-size official AV-Flow checkpoint.

  python benchmarks/bench_import.py [--keep DIR]

Writes an official-format `av_flow_ckpt_50h.pt` at the real size (67,935,576 parameters,
random weights, and Adam moments as a trained file holds them: about 0.8 GB) with the project's
torch-free writer, then imports it with `avflow_jax.import_official` in a fresh process, once
without and once with `--adam-moments`. Memory is the import process's peak resident set
(VmHWM) minus its resident set just before the import starts (after Python, JAX and orbax are loaded),
compared with the bytes of the weights the import keeps. Last line: JSON.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

FIXTURES = os.path.join(ROOT, "tests", "data", "official")

_CHILD = r"""
import json, os, sys, time
sys.path.insert(0, {root!r})
from avflow_jax.core import cli
from avflow_jax.inference import official_import
def status(field):
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024
rss = lambda: status("VmRSS")
config = cli.load_config_file(os.path.join({root!r}, "configs", "official_50h.py"))
files = official_import.ReleaseFiles(av={av!r}, head_vae={vae!r}, head_stats={stats!r})
import jax, orbax.checkpoint  # Loaded before the baseline is read.
base = rss()
t0 = time.perf_counter()
official_import.import_release(files, {out!r}, config, adam_moments={adam!r}, log=lambda *_: None)
seconds = time.perf_counter() - t0
peak = status("VmHWM")  # Not ru_maxrss: Linux carries that over from the parent across exec.
print(json.dumps({{"seconds": seconds, "baseline_bytes": base, "peak_bytes": peak}}))
"""


def full_size_checkpoint(path: str, seed: int = 0) -> int:
  """Writes a real-size official AV checkpoint with moments; returns its parameter count."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  from avflow_jax.core import cli  # pylint: disable=g-import-not-at-top
  from avflow_jax.core import torch_writer  # pylint: disable=g-import-not-at-top
  from avflow_jax.models import av_config  # pylint: disable=g-import-not-at-top
  from avflow_jax.models import dit  # pylint: disable=g-import-not-at-top
  from avflow_jax.models import official_keys  # pylint: disable=g-import-not-at-top
  config = cli.load_config_file(os.path.join(ROOT, "configs", "official_50h.py"))
  dims = av_config.AVDims(face=256, head_latent=8, audio=80, cond=29)
  model = dit.make_av_model(config.model, dims)
  shapes = nn.unbox(jax.eval_shape(lambda: dit.init_av_params(model, dims,
                                                              jax.random.PRNGKey(0))))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: rng.standard_normal(s.shape, np.float32) * 0.02, shapes)
  state = official_keys.official_from_av_params(params)
  moments = {i: {"step": np.float32(1e6), "exp_avg": rng.standard_normal(v.shape, np.float32),
                 "exp_avg_sq": rng.random(v.shape, np.float32)}
             for i, v in enumerate(state.values())}
  obj = {"iteration": 1_000_000, "model_state_dict": state,
         "optimizer_state_dict": {"state": moments, "param_groups": [
             {"lr": 1e-4, "betas": (0.9, 0.98), "eps": 1e-9, "weight_decay": 0.0,
              "amsgrad": False, "params": list(range(len(state)))}]}}
  torch_writer.write_torch_checkpoint(path, obj, archive_name="iter-1000000")
  return sum(v.size for v in state.values())


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--keep", help="write the checkpoint here (default: a temporary directory)")
  args = ap.parse_args()
  tmp = args.keep or tempfile.mkdtemp(prefix="bench_import_")
  os.makedirs(tmp, exist_ok=True)
  av = os.path.join(tmp, "av_flow_ckpt_50h.pt")
  t0 = time.perf_counter()
  n = full_size_checkpoint(av)
  write_s = time.perf_counter() - t0
  stats = os.path.join(tmp, "normstats")
  os.makedirs(stats, exist_ok=True)
  io = np.load(os.path.join(FIXTURES, "head_vae_io.npz"))
  for name in ("head_qvec_mean", "head_qvec_std", "head_translation_mean",
               "head_translation_std"):
    np.save(os.path.join(stats, name + ".npy"), io[name])
  result = {"params": int(n), "file_bytes": os.path.getsize(av), "write_s": round(write_s, 2)}
  for adam in (False, True):
    out = os.path.join(tmp, f"run_adam{int(adam)}")
    code = _CHILD.format(root=ROOT, av=av, vae=os.path.join(FIXTURES, "head_vae_iter-0500000.pt"),
                         stats=stats, out=out, adam=adam)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    if proc.returncode:
      sys.exit(f"import failed:\n{proc.stderr[-3000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    kept = n * 4 * (3 if adam else 1)
    key = "with_adam" if adam else "weights_only"
    result[key] = {"seconds": round(r["seconds"], 2),
                   "peak_minus_baseline_mb": round((r["peak_bytes"] - r["baseline_bytes"]) / 2**20),
                   "kept_mb": round(kept / 2**20),
                   "ratio": round((r["peak_bytes"] - r["baseline_bytes"]) / kept, 2),
                   "baseline_mb": round(r["baseline_bytes"] / 2**20)}
  print(json.dumps(result))


if __name__ == "__main__":
  main()
