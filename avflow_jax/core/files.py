"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one.

Every writer in the package (shards, run configs, reports, plots, videos, converted weights,
caches) goes through `atomic_path`: the data is written to a hidden temporary name in the
target's own directory (so the final rename never crosses a filesystem), made readable as a
normal file would be, and renamed over the target only when the writer finished without an
exception. A crash or a kill leaves at most a `.NAME.<pid>.*.partial*` file, which
`remove_partials` deletes once its writer (the pid in the name) is no longer running, so a
cleanup never deletes the temporary of a live writer (another run, a worker of this one).
"""

import contextlib
import errno
import glob
import os
import re
import tempfile
from typing import Iterator, Optional, Union

PARTIAL = ".partial"  # Marks temporary files; the target's extension follows it.
# `.BASE.<pid>.<random>.partial.EXT` (greedy: BASE may hold dots and digits) and the older
# `NAME.tmp-<pid>`; both name their writer's pid.
_PARTIAL_PID = re.compile(r"^\..*\.(\d+)\.[A-Za-z0-9_]+" + re.escape(PARTIAL))
_TMP_PID = re.compile(r"\.tmp-(\d+)")


def _umask() -> int:
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


@contextlib.contextmanager
def atomic_path(path: str, fsync: bool = False) -> Iterator[str]:
  """Yields a temporary path to write; renames it to `path` if the block succeeds.

  Args:
    path: the final file (its directory is created if needed).
    fsync: flush the file to disk before the rename (for data that must survive a power cut).

  Yields:
    The temporary path (`.BASENAME.<pid>.XXXX.partial.EXT` beside `path`), created empty.
  """
  path = os.path.abspath(os.path.expanduser(path))
  directory, base = os.path.split(path)
  os.makedirs(directory, exist_ok=True)
  # The pid in the name lets `remove_partials` tell a live writer's file from a dead one's.
  fd, tmp = tempfile.mkstemp(prefix=f".{base}.{os.getpid()}.",
                             suffix=PARTIAL + os.path.splitext(base)[1], dir=directory)
  os.close(fd)
  try:
    yield tmp
    if fsync:
      with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp made it private.
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_atomic(path: str, data: Union[bytes, str], fsync: bool = False) -> None:
  """Writes `data` (str as UTF-8) to `path` atomically."""
  with atomic_path(path, fsync=fsync) as tmp:
    with open(tmp, "wb") as f:
      f.write(data.encode("utf-8") if isinstance(data, str) else data)


def fsync_directory(directory: str) -> None:
  """Flushes a directory's entries (renames into it) to disk, where the OS allows it."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return  # Not openable as a file on this platform: nothing to flush.
  try:
    os.fsync(fd)
  except OSError as e:
    if e.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
      raise  # EINVAL & co: the filesystem does not sync directories; a real I/O error counts.
  finally:
    os.close(fd)


def _alive(pid: int) -> bool:
  """Whether a process with this pid runs on this host (ours counts: it may be writing)."""
  if pid == os.getpid():
    return True
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # Someone else's process: alive.
  except OverflowError:
    return False
  return True


def writer_pid(name: str) -> Optional[int]:
  """The writer's pid encoded in a temporary's file name, or None (a pre-pid temporary)."""
  base = os.path.basename(name)
  m = _PARTIAL_PID.match(base) or _TMP_PID.search(base)
  return int(m.group(1)) if m else None


def remove_partials(directory: str) -> int:
  """Deletes the temporaries of interrupted writes in `directory`; returns how many.

  Only temporaries whose writer is dead are deleted: a live process's (another run writing
  into the same directory, a worker of this one) are kept. The pid check holds on this host
  only; writers on other hosts must be kept out by a lock (`core/locks`). Temporaries without
  a pid (written by versions before the pid was in the name) are deleted, as they were before.
  Also removes `*.tmp-<pid>` files, the temporaries of versions before `atomic_path`.
  """
  stale = (glob.glob(os.path.join(directory, f".*{PARTIAL}*"))
           + glob.glob(os.path.join(directory, "*.tmp-*")))
  removed = 0
  for path in stale:
    pid = writer_pid(path)
    if pid is not None and _alive(pid):
      continue
    try:
      os.remove(path)
      removed += 1
    except FileNotFoundError:
      pass  # Its writer finished (renamed it) or another cleanup got there first.
  return removed
