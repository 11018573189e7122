"""ArrayRecord shard writing: one clip per record, complete files only under final names.

A run writes its shards as a new generation, `<split>-g<G>-<i>-of-<n>.array_record`, so it
never overwrites a file the current manifest.json names: until the new manifest is renamed
into place a reader sees the old dataset whole, and after it the new one. Files of older
generations (and unprefixed `<split>-<i>-of-<n>` files of earlier versions) are deleted only
once no manifest names them.
"""

import os
import re
from typing import Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from avflow_jax.core import constants
from avflow_jax.core import files
from avflow_jax.core import records

SHARD_OPTIONS = "group_size:1,uncompressed"
SHARD_PATTERN = re.compile(r"^(train|val)-(?:g(\d{4,})-)?\d{5}-of-\d{5}\.array_record$")
TARGET_SHARD_BYTES = 256 << 20
# 64 frames (0.74 s, ~150 kB with every stream): a crop of C frames reads at most
# (ceil(C / 64) + 1) * 64 frames, 1.3x a 345-frame crop, and a 50-hour corpus is ~250k records.
DEFAULT_PAGE_FRAMES = 64


class ShardWriteError(OSError):
  """ArrayRecord could not write a shard (it reports I/O failures as RuntimeError)."""


def shard_name(split: str, index: int, count: int, generation: Optional[int] = None) -> str:
  """`<split>-g<generation:04d>-<i:05d>-of-<n:05d>.array_record` (no `g` part without one)."""
  gen = "" if generation is None else f"g{generation:04d}-"
  return f"{split}-{gen}{index:05d}-of-{count:05d}.array_record"


def shard_split(name: str) -> Optional[str]:
  """The split a shard file name belongs to, or None when it is not a shard name."""
  m = SHARD_PATTERN.match(os.path.basename(name))
  return m.group(1) if m else None


def shard_generation(name: str) -> Optional[int]:
  """The generation in a shard file name; None for other names and unprefixed shards."""
  m = SHARD_PATTERN.match(os.path.basename(name))
  return int(m.group(2)) if m and m.group(2) else None


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
  """Writes records to `path` atomically (temporary name, then rename); returns the count.

  Raises:
    ShardWriteError: ArrayRecord failed to write (its RuntimeError carries the OS's text,
      e.g. "No space left on device"); the temporary is removed.
  """
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  n = 0
  # fsync: the manifest that names this shard is committed right after; the data must be on
  # disk before it, or a power cut could leave a manifest naming an empty file.
  with files.atomic_path(path, fsync=True) as tmp:
    writer = array_record_module.ArrayRecordWriter(tmp, SHARD_OPTIONS)
    try:
      try:
        for data in records:
          writer.write(data)
          n += 1
          on_record()
      finally:
        writer.close()  # Buffered data reaches the disk here: ENOSPC often shows only now.
    except RuntimeError as e:
      raise ShardWriteError(None, f"ArrayRecord: {e}", path) from e
  return n


def stale_shards(directory: str, keep: Iterable[str]) -> list:
  """Shard files in `directory` that a manifest naming `keep` does not reference."""
  keep = set(keep)
  return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                if SHARD_PATTERN.match(f) and f not in keep)


def format_fields(page_frames: int) -> dict:
  """The manifest's format fields for records of `page_frames` (0: whole clips, format 1)."""
  if page_frames:
    return {"format_version": 2, "page_frames": int(page_frames)}
  return {"format_version": 1}


def clip_records(encoded: Iterable[bytes], page_frames: int,
                 on_clip: Callable[[], None] = lambda: None) -> Iterator[bytes]:
  """Shard records of encoded whole clips: the clips themselves, or their pages."""
  for data in encoded:
    if not page_frames:
      yield data
    else:
      for page in records.split_pages(records.decode_record(data), page_frames,
                                      constants.HOP_LENGTH):
        yield records.encode_record(page)
    on_clip()


def clip_entries(group: Sequence, shard: int, page_frames: int) -> list[dict]:
  """Manifest entries of the clips (name, key, frames, ...) written in order into `shard`.

  `index` is the clip's first record in the shard; paged entries also give `pages`.
  """
  out, index = [], 0
  for e in group:
    entry = {"name": e[0], "frames": e[2], "shard": shard, "index": index}
    n = 1
    if page_frames:
      n = records.num_pages(e[2], page_frames)
      entry["pages"] = n
    out.append(entry)
    index += n
  return out
