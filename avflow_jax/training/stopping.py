"""Stopping a training run cleanly: SIGTERM (preemption) and SIGINT (Ctrl-C) save, then exit.

The loop checks the flag after every step; when set it saves a checkpoint on that step and
raises `Preempted`, which the command turns into exit code 75 (preempted: restart to resume)
or 130 (interrupted), without a traceback.
"""

import os
import signal
import threading

from absl import logging

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C.


class Preempted(Exception):
  """Raised after the preemption (SIGTERM) or interruption (SIGINT) checkpoint is written.

  Attributes:
    step: the step that was saved.
    interrupted: True for SIGINT (exit 130), False for a preemption (exit 75).
  """

  def __init__(self, step: int, interrupted: bool = False):
    super().__init__(step)
    self.step = step
    self.interrupted = interrupted


class StopFlag:
  """Records SIGTERM (and SIGINT) so the loop saves a checkpoint and exits after this step.

  Single-process runs only: multi-process runs learn of SIGTERM through JAX's preemption sync
  point, and a Ctrl-C there ends the process (train.py exits 130 without a traceback).
  A second Ctrl-C quits at once; the checkpoints already committed are intact.
  """

  def __init__(self):
    self.signum = None
    self._previous = {}

  @property
  def received(self) -> bool:
    return self.signum is not None

  def install(self):
    if threading.current_thread() is not threading.main_thread():
      return
    for signum in (signal.SIGTERM, signal.SIGINT):
      self._previous[signum] = signal.signal(signum, self._handle)

  def uninstall(self):
    """Restores the handlers that were there before (train may be called as a library)."""
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT and self.signum == signal.SIGINT:
      logging.warning("Second Ctrl-C: quitting without saving this step.")
      os._exit(EXIT_INTERRUPTED)  # pylint: disable=protected-access
    name = signal.Signals(signum).name
    logging.warning("%s received: checkpointing at the end of this step%s.", name,
                    " (Ctrl-C again to quit without saving)" if signum == signal.SIGINT else "")
    self.signum = signum
