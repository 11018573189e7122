"""The shared shape of the package's command-line entry points (sample, evaluate, ...)."""

import argparse
import sys
from typing import Callable, Optional, Sequence

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
