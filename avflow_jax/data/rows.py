"""Which rows of each global batch a process reads: one convention for every input pipeline.

Global batch k is elements [k * B, (k + 1) * B) of a pipeline's global stream (a pure function
of the seed); each process reads only the rows its devices hold (`process_rows`), so a run on
N hosts sees the same global batches, row for row, as a run on one.
"""

from typing import Optional, Sequence

import grain
import numpy as np


class HostRows(grain.MapDataset):
  """This host's rows of each global batch: local index j -> global element
  (j // L) * G + rows[j % L], with L = len(rows) and G the global batch size."""

  def __init__(self, parent: grain.MapDataset, rows: Sequence[int], global_batch_size: int):
    super().__init__(parent)
    self._rows = np.asarray(rows, np.int64)
    self._global = global_batch_size

  def __len__(self) -> int:
    return (len(self._parent) // self._global) * len(self._rows)

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    local = len(self._rows)
    return self._parent[(index // local) * self._global + int(self._rows[index % local])]

  def __str__(self) -> str:
    return f"HostRows(rows={self._rows.tolist()}, global_batch_size={self._global})"


def process_rows(global_batch_size: int, batch_sharding=None) -> list[int]:
  """Rows of the global batch held by this process's devices (contiguous slices by default)."""
  import jax  # The pipeline itself stays numpy-only; only this query needs the runtime.
  if batch_sharding is None:
    return resolve_rows(global_batch_size, None, jax.process_index(), jax.process_count())
  index_map = batch_sharding.addressable_devices_indices_map((global_batch_size,))
  rows = set()
  for idx in index_map.values():
    rows.update(range(*idx[0].indices(global_batch_size)))
  return sorted(rows)


def resolve_rows(global_batch_size: int, rows: Optional[Sequence[int]] = None,
                 process_index: int = 0, process_count: int = 1) -> list[int]:
  """`rows` as a list, or by default the contiguous slice `process_index` of `process_count`.

  Raises:
    ValueError: the batch does not split evenly over the processes (naming config.batch_size).
  """
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"config.batch_size={global_batch_size} is not divisible by the "
                     f"{process_count} processes (it must be a positive multiple)")
  if rows is None:
    local = global_batch_size // process_count
    rows = range(process_index * local, (process_index + 1) * local)
  rows = [int(r) for r in rows]
  if not rows or min(rows) < 0 or max(rows) >= global_batch_size:
    raise ValueError(f"rows {rows[:4]}...: must be indices into a global batch of "
                     f"{global_batch_size}")
  return rows
