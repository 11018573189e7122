"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one.

Every writer in the package (shards, run configs, reports, plots, videos, converted weights,
caches) goes through `atomic_path`: the data is written to a hidden temporary name in the
target's own directory (so the final rename never crosses a filesystem), made readable as a
normal file would be, and renamed over the target only when the writer finished without an
exception. A crash or a kill leaves at most a `.NAME.*.partial*` file, which
`remove_partials` deletes.
"""

import contextlib
import glob
import os
import tempfile
from typing import Iterator, Union

PARTIAL = ".partial"  # Marks temporary files; the target's extension follows it.


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
    The temporary path (`.BASENAME.XXXX.partial.EXT` beside `path`), created empty.
  """
  path = os.path.abspath(os.path.expanduser(path))
  directory, base = os.path.split(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=PARTIAL + os.path.splitext(base)[1],
                             dir=directory)
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


def remove_partials(directory: str) -> int:
  """Deletes the temporaries of interrupted writes in `directory`; returns how many.

  Also removes `*.tmp-<pid>` files, the temporaries of versions before `atomic_path`.
  """
  stale = (glob.glob(os.path.join(directory, f".*{PARTIAL}*"))
           + glob.glob(os.path.join(directory, "*.tmp-*")))
  for path in stale:
    os.remove(path)
  return len(stale)
