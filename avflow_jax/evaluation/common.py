"""What every scoring command shares: its flags and their checks, the report's place and format."""

import argparse
import os
import re

from avflow_jax.core.errors import InputError


def add_scoring_arguments(p: argparse.ArgumentParser, default_output: str, plots: str) -> None:
  """The flags every scoring CLI shares (split, output, sampler, clip count, weights, logs)."""
  p.add_argument("--split", default="val", help="manifest split to evaluate (default: val)")
  p.add_argument("--output", help=f"report JSON path (default: {default_output})")
  p.add_argument("--steps", type=int, default=8, help="Euler steps of the avatar's sampler")
  p.add_argument("--seed", type=int, default=0, help="noise seed (clip i uses seed + i)")
  p.add_argument("--max-clips", type=int, help="evaluate only the first N clips of the split")
  p.add_argument("--which", choices=("ema", "params"), default="ema", help="weights to use")
  p.add_argument("--data-dir", help="shard directory, if it moved since training, or another "
                 "corpus to score on (normalised with the run's own statistics)")
  p.add_argument("--no-plots", action="store_true", help=f"skip {plots}")
  p.add_argument("--verbose", action="store_true", help="show library logs on stderr")


def check_scoring_arguments(args, workdirs: tuple[str, ...] = ("workdir",)) -> None:
  """Checks of the shared flags that need no model; InputError names the flag."""
  for flag in workdirs:
    path = getattr(args, flag)
    if not os.path.isdir(path):
      raise InputError(f"--{flag.replace('_', '-')} {path}: no such directory")
  if args.steps < 1:
    raise InputError(f"--steps {args.steps}: must be >= 1")
  if args.max_clips is not None and args.max_clips < 1:
    raise InputError(f"--max-clips {args.max_clips}: must be >= 1")
  if args.output is not None and not args.output.endswith(".json"):
    raise InputError(f"--output {args.output}: must be a .json path (the report)")


def report_location(output: str) -> tuple[str, str, str]:
  """(absolute report path, its folder (created, checked writable), file stem); InputError."""
  output = os.path.abspath(os.path.expanduser(output))
  out_dir, stem = os.path.dirname(output), os.path.splitext(os.path.basename(output))[0]
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise InputError(f"--output {output}: cannot create {out_dir} ({e.strerror})") from e
  if not os.access(out_dir, os.W_OK):
    raise InputError(f"--output {output}: {out_dir} is not writable")
  return output, out_dir, stem


def plot_name(stem: str, clip: str) -> str:
  """STEM_CLIP.png with anything but [A-Za-z0-9._-] in the clip name replaced by '_'."""
  return f"{stem}_{re.sub(r'[^A-Za-z0-9._-]', '_', clip)}.png"


def fmt(x) -> str:
  if x is None:
    return "–"
  if isinstance(x, float):
    return f"{x:.4g}"
  return str(x)
