"""The shared shape of the package's command-line entry points (sample, evaluate, ...)."""

import argparse
import importlib.util
import os
import sys
from typing import Callable, Optional, Sequence

import numpy as np

from avflow_jax.core import metric_writer
from avflow_jax.core.errors import EXIT_BAD_INPUT
from avflow_jax.core.errors import AvatarError
from avflow_jax.core.errors import InputError


class ArgumentParser(argparse.ArgumentParser):
  """An argparse parser whose usage errors raise InputError (so `run` prints one line)."""

  def error(self, message):
    raise InputError(message)


def run(argv: Optional[Sequence[str]], make_parser: Callable, body: Callable,
        input_errors: tuple[type, ...] = ()) -> int:
  """Parses argv and runs body(args); InputError, AvatarError and `input_errors` exit with 2."""
  bad_input = tuple(input_errors) + (InputError, AvatarError)
  argv = sys.argv[1:] if argv is None else list(argv)
  try:
    args = make_parser().parse_args(argv)
  except bad_input as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  with metric_writer.quiet_cli_logs(args.verbose):
    try:
      body(args)
    except bad_input as e:
      print(f"error: {e}", file=sys.stderr)
      return EXIT_BAD_INPUT
  return 0


def load_config_file(spec: str, what: str = "--config"):
  """`get_config(arg)` of a config file given as PATH or PATH:ARG (as `train --config` takes).

  Raises:
    InputError: the file is missing, does not import, or has no get_config (one line).
  """
  path, _, arg = spec.partition(":")
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise InputError(f"{what} {path}: file missing")
  # Config files import their base as `configs.base`: make the checkout they live in importable.
  root = os.path.dirname(os.path.dirname(path))
  if root not in sys.path:
    sys.path.insert(0, root)
  try:
    module_spec = importlib.util.spec_from_file_location("avflow_user_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)
  except Exception as e:  # pylint: disable=broad-except  (a config file can raise anything)
    raise InputError(f"{what} {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def load_npy(path: str, what: str, npz_key: Optional[str] = None):
  """An array from a .npy file (or the `npz_key` array of an .npz), never unpickling.

  Raises:
    InputError: missing or unreadable file, or an npz without that array (one line).
  """
  if not os.path.isfile(path):
    raise InputError(f"{what} {path}: file missing")
  try:
    x = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise InputError(f"{what} {path}: not a readable .npy/.npz array ({msg})") from e
  if isinstance(x, np.lib.npyio.NpzFile):
    with x:
      key = npz_key or what.lstrip("-").split("-")[0]
      if key not in x.files:
        raise InputError(f"{what} {path}: npz without a {key!r} array (has {x.files})")
      x = x[key]
  return x


def load_frames(path: str, what: str, width: int, meaning: str, npz_key: Optional[str] = None):
  """A (T, width) float32 array of frames from .npy/.npz, checked for shape and finiteness.

  Raises:
    InputError: as `load_npy`, or a wrong dtype or shape, no frames, NaN or inf (one line).
  """
  x = load_npy(path, what, npz_key)
  if not np.issubdtype(x.dtype, np.number):
    raise InputError(f"{what} {path}: dtype {x.dtype} is not numeric")
  if x.ndim != 2 or x.shape[1] != width:
    raise InputError(f"{what} {path}: expected shape (T, {width}) ({meaning}), got {x.shape}")
  if x.shape[0] == 0:
    raise InputError(f"{what} {path}: no frames")
  if not np.isfinite(x).all():
    raise InputError(f"{what} {path}: contains NaN or inf")
  return x.astype(np.float32)
