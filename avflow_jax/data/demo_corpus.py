"""Builds the embedded demo avatar's shards on first use, so the main job runs out of the box."""

import json
import os
import subprocess
import sys

from absl import logging
import jax
from jax.experimental import multihost_utils


def demo_shard_dir(cache: str, minutes: float, seed: int) -> str:
  root = os.path.join(os.path.expanduser(cache), f"demo-{minutes:g}min-seed{seed}")
  return os.path.join(root, "shards")


def ensure_demo_shards(cache: str, minutes: float, seed: int) -> str:
  """Generates the demo corpus and prepares its shards once; returns the shard directory.

  Process 0 does the work (the cache must be on a filesystem all hosts see); the others wait.
  """
  shards = demo_shard_dir(cache, minutes, seed)
  corpus = os.path.join(os.path.dirname(shards), "corpus")
  if jax.process_index() == 0 and _needs_prepare(shards):
    if not os.path.exists(os.path.join(corpus, "COMPLETE")):
      logging.info("Generating the %g-minute demo corpus into %s (once).", minutes, corpus)
      _run([sys.executable, "-m", "data_prep.demo", "--output", corpus,
            "--minutes", str(minutes), "--seed", str(seed)])
      with open(os.path.join(corpus, "COMPLETE"), "w") as f:
        f.write("ok\n")
    logging.info("Preparing demo shards into %s (once).", shards)
    _run([sys.executable, "-m", "data_prep", "--format", "avflow50h", "--input", corpus,
          "--output", shards])
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("demo_shards_ready")
  return shards


def _needs_prepare(shards: str) -> bool:
  """No shards yet, or whole-clip shards of an older version whose corpus is still cached (a
  re-prepare reuses its clips and writes paged shards: the same crops, cheaper to read)."""
  path = os.path.join(shards, "manifest.json")
  if not os.path.exists(path):
    return True
  corpus = os.path.join(os.path.dirname(shards), "corpus", "COMPLETE")
  try:
    with open(path) as f:
      return int(json.load(f).get("format_version", 1)) < 2 and os.path.exists(corpus)
  except (OSError, ValueError):
    return False  # Let the pipeline report what is wrong with it.


def _run(cmd):
  result = subprocess.run(cmd, check=False)
  if result.returncode:
    raise RuntimeError(f"`{' '.join(cmd)}` failed with exit code {result.returncode}")
