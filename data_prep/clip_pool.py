"""Runs the per-clip jobs of a prepare run: in this process or in a spawn process pool.

The worker returns one dict per clip (see `data_prep.prepare.process_clip`): a success
counts towards the progress bar's realtime factor, a bad clip is reported and skipped (or
stops the run under --strict) and an output error stops the run.
"""

import multiprocessing
import signal
import sys
import time
from typing import Callable

from tqdm import tqdm

from avflow_jax.core import constants as C
from avflow_jax.core.errors import FatalError
from data_prep import output


def _ignore_sigint() -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def run_jobs(worker: Callable[[tuple], dict], jobs: list, workers: int, strict: bool,
             progress: bool) -> tuple[list, list]:
  """Runs `worker` over jobs; returns (done names, skipped dicts).

  Args:
    worker: a picklable module-level function, one job -> {"name", "ok", ...}.
    jobs: its arguments, one per clip.
    workers: processes (1, or a single job: run in this process).
    strict: a bad clip raises FatalError instead of being skipped.
    progress: show a tqdm bar.

  Raises:
    FatalError: a bad clip under `strict`.
    output.OutputError: a worker could not write its cache entry.
  """
  done, skipped = [], []
  bar = tqdm(total=len(jobs), unit="clip", desc="clips", disable=not progress,
             dynamic_ncols=True)
  audio_s = 0.0
  t0 = time.time()

  def handle(result):
    nonlocal audio_s
    bar.update(1)
    if "output_error" in result:
      raise output.OutputError(result["output_error"])
    if result["ok"]:
      done.append(result["name"])
      audio_s += result["frames"] / C.FRAME_RATE
      bar.set_postfix_str(f"{audio_s / max(time.time() - t0, 1e-9):.0f}x realtime")
      return
    msg = f"skipped {result['name']}: {result['reason']}"
    if strict:
      raise FatalError(f"--strict: {msg}")
    tqdm.write(msg, file=sys.stderr)
    skipped.append({"clip": result["name"], "reason": result["reason"], "kind": result["kind"]})

  try:
    if workers == 1 or len(jobs) <= 1:
      for job in jobs:
        handle(worker(job))
    else:
      # spawn: workers must not inherit a forked JAX runtime. Workers ignore SIGINT so a
      # Ctrl-C reaches only this process, which then terminates them (their unfinished
      # cache writes are temporaries, removed by the next run).
      ctx = multiprocessing.get_context("spawn")
      pool = ctx.Pool(min(workers, len(jobs)), initializer=_ignore_sigint)
      try:
        for result in pool.imap_unordered(worker, jobs):
          handle(result)
      except BaseException:
        pool.terminate()
        pool.join()
        raise
      pool.close()
      pool.join()
  finally:
    bar.close()
  return done, skipped
