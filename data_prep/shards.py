"""ArrayRecord shard writing: one clip per record, complete files only under final names."""

import os
import re
from typing import Callable, Iterable, Sequence

import numpy as np

from avflow_jax.core import files

SHARD_OPTIONS = "group_size:1"
SHARD_PATTERN = re.compile(r"^(train|val)-\d{5}-of-\d{5}\.array_record$")
TARGET_SHARD_BYTES = 256 << 20


def shard_name(split: str, index: int, count: int) -> str:
  """`<split>-<i:05d>-of-<n:05d>.array_record`."""
  return f"{split}-{index:05d}-of-{count:05d}.array_record"


def num_shards(requested: int, num_clips: int, total_bytes: int) -> int:
  """Shards for a split: `requested` (or ~256 MB each when 0), capped by the clip count."""
  if num_clips == 0:
    return 0
  n = requested if requested > 0 else -(-total_bytes // TARGET_SHARD_BYTES)
  return int(min(max(n, 1), num_clips))


def assign(items: Sequence, count: int) -> list:
  """Splits `items` (in order) into `count` contiguous groups of near-equal size."""
  if count == 0:
    return []
  bounds = np.linspace(0, len(items), count + 1).round().astype(int)
  return [list(items[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def write_shard(path: str, records: Iterable[bytes],
                on_record: Callable[[], None] = lambda: None) -> int:
  """Writes records to `path` atomically (temporary name, then rename); returns the count."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  n = 0
  with files.atomic_path(path) as tmp:
    writer = array_record_module.ArrayRecordWriter(tmp, SHARD_OPTIONS)
    try:
      for data in records:
        writer.write(data)
        n += 1
        on_record()
    finally:
      writer.close()
  return n


def stale_shards(directory: str, keep: Iterable[str]) -> list:
  """Shard files in `directory` that the new manifest does not reference."""
  keep = set(keep)
  return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                if SHARD_PATTERN.match(f) and f not in keep)
