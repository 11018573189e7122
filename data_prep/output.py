"""Failures on the output side of a run: writing shards, the cache or the manifest.

A full disk, an exhausted quota, a read-only filesystem or a permission error while writing
`--output` is not a property of one clip: turning it into a per-clip skip would let a run
finish with clips silently missing. Such errors stop the run instead (`OutputError`, exit
status `EXIT_OUTPUT`), naming the path and the OS's reason; bad *input* clips are still
skipped one by one.
"""

import contextlib
import errno as errno_lib
import os
from typing import Iterator

EXIT_OUTPUT = 2  # --output unusable or not writable (disk full, permission, locked, a file).


class OutputError(RuntimeError):
  """The output directory cannot be used or written; the message names the path and why."""


def describe(e: OSError, path: str) -> str:
  """`PATH: strerror [ENAME]` for an OSError (the path from the error when it has one)."""
  where = e.filename if e.filename else path
  reason = e.strerror or str(e) or type(e).__name__
  code = errno_lib.errorcode.get(e.errno) if isinstance(e.errno, int) else None
  return f"{where}: {reason}" + (f" [{code}]" if code else "")


def message(e: OSError, path: str, action: str = "write") -> str:
  """The one-line error of a failed output write (or read), with what to do about it."""
  return (f"cannot {action} {describe(e, path)}; the run stopped and the previous manifest.json "
          "(if any) is unchanged: free space or fix the permissions, then rerun the same "
          "command (finished clips are kept in the cache)")


@contextlib.contextmanager
def writing(path: str, action: str = "write") -> Iterator[None]:
  """Turns an OSError raised in the block into an OutputError naming `path`."""
  try:
    yield
  except OSError as e:
    raise OutputError(message(e, path, action)) from e


def check_directory(path: str) -> None:
  """Raises OutputError when `path` exists but is not a directory (or is under a file)."""
  probe = os.path.abspath(path)
  while probe and not os.path.exists(probe):
    parent = os.path.dirname(probe)
    if parent == probe:
      return
    probe = parent
  if probe and not os.path.isdir(probe):
    what = "is" if probe == os.path.abspath(path) else f"is under {probe}, which is"
    raise OutputError(f"--output {path} {what} a file, not a directory; pass a directory "
                      "(it is created if missing)")
