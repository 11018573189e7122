"""One writer per directory: an advisory lock file (`DIR/.avflow.lock`) held for a whole run.

The lock is an `fcntl.flock` on the file, so the kernel releases it when its process dies,
however it dies (SIGKILL, OOM, power cut of a local disk): a dead process's lock is always
taken over. The file also records who holds it (pid, host, command, start time); a new holder
that finds another process's record in a free lock says it took over a stale lock.

flock is per host on most network filesystems, so a multi-host job takes the lock on process 0
only (the one that writes the run's files).
"""

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from typing import Callable, Iterator, Optional

LOCK_NAME = ".avflow.lock"


class LockedError(RuntimeError):
  """Another live process holds the directory's lock; the message names it."""


def _holder(path: str) -> Optional[dict]:
  try:
    with open(path) as f:
      return json.loads(f.read() or "null")
  except (OSError, ValueError):
    return None


def _describe(info: Optional[dict]) -> str:
  if not info:
    return "another process"
  return (f"pid {info.get('pid')} on {info.get('host')} (`{info.get('command', '?')}`, since "
          f"{info.get('since', '?')})")


@contextlib.contextmanager
def hold(directory: str, what: str, log: Callable[[str], None] = print) -> Iterator[str]:
  """Holds `directory`'s lock for the block; LockedError at once if a live process has it.

  Args:
    directory: the directory (created if needed).
    what: how the error names the directory ("workdir", "--output").
    log: where the stale-lock takeover message goes.

  Yields:
    The lock file's path.
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, LOCK_NAME)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      raise LockedError(f"{what} {directory} is in use by {_describe(_holder(path))}; wait "
                        f"for it to finish or stop it (lock file {path})") from e
    previous = _holder(path)
    if previous and previous.get("pid") != os.getpid():
      log(f"{what} {directory}: taking over the stale lock of {_describe(previous)}, which "
          "is no longer running")
    info = {"pid": os.getpid(), "host": socket.gethostname(),
            "command": " ".join(os.path.basename(a) if i == 0 else a
                                for i, a in enumerate(sys.argv))[:200],
            "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    try:
      yield path
    finally:
      os.ftruncate(fd, 0)  # A clean exit leaves no holder record behind.
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)
