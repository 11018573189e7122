"""TensorBoard event files and a console progress bar for long jobs."""

import contextlib
import datetime
import json
import os
import sys

import tqdm


class MetricWriter:
  """Writes scalars as TensorBoard events (tensorboardX; no TensorFlow needed)."""

  def __init__(self, logdir: str, enabled: bool = True, jsonl_path: str = None):
    self._writer = None
    self._jsonl = None
    if enabled and jsonl_path:
      self._jsonl = open(jsonl_path, "a")
    if enabled:
      from tensorboardX import SummaryWriter  # Imported lazily: only process 0 writes.
      os.makedirs(logdir, exist_ok=True)
      self._writer = SummaryWriter(logdir)

  def scalars(self, step: int, values: dict) -> None:
    if self._jsonl is not None:
      # One JSON line per logged step: easy to diff between runs and to plot.
      self._jsonl.write(json.dumps({"step": step, **{k: float(v) for k, v in values.items()}})
                        + "\n")
      self._jsonl.flush()
    if self._writer is None:
      return
    for k, v in values.items():
      self._writer.add_scalar(k, float(v), step)
    self._writer.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def format_eta(seconds: float) -> str:
  if not seconds < 1e9:
    return "?"
  return str(datetime.timedelta(seconds=int(seconds)))


@contextlib.contextmanager
def progress(start: int, total: int):
  """A tqdm bar (steps, rate, ETA) on interactive terminals; silent in batch logs."""
  bar = tqdm.tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
                  disable=not sys.stderr.isatty())
  try:
    yield bar
  finally:
    bar.close()


class _DropLibraryInfo:
  """absl handler filter: keeps INFO lines from our code, drops orbax/grain chatter below WARNING."""

  _NOISY = ("orbax", "grain", "array_record")

  def filter(self, record) -> bool:
    if record.levelno >= 30:
      return True
    return not any(n in record.pathname for n in self._NOISY)


def quiet_library_logs() -> None:
  """Hides the libraries' per-checkpoint INFO lines so progress lines stay readable."""
  from absl import logging as absl_logging
  absl_logging.get_absl_handler().addFilter(_DropLibraryInfo())


@contextlib.contextmanager
def quiet_cli_logs(verbose: bool):
  """Keeps stderr for our errors: library warnings (orbax, absl, numpy) only with --verbose.

  The previous logging state is restored on exit, so in-process callers (tests) are unaffected.
  """
  import logging as std_logging  # pylint: disable=g-import-not-at-top
  import warnings  # pylint: disable=g-import-not-at-top

  from absl import logging  # pylint: disable=g-import-not-at-top
  old_verbosity = logging.get_verbosity()
  root = std_logging.getLogger()
  old_level = root.level
  with warnings.catch_warnings():
    if verbose:
      logging.set_verbosity(logging.INFO)
    else:
      logging.set_verbosity(logging.ERROR)
      root.setLevel(std_logging.ERROR)
      warnings.simplefilter("ignore")
    try:
      yield
    finally:
      logging.set_verbosity(old_verbosity)
      root.setLevel(old_level)
