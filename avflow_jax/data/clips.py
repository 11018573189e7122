"""Reading clip records from the shards: a cached random-access source, and one clip by name."""

import collections
import os
from typing import Iterator, Optional, Sequence

import grain
import numpy as np

from avflow_jax.core import records
from avflow_jax.core.errors import AvatarError
from avflow_jax.core.errors import InputError


class ShardError(ValueError):
  """A shard is missing, unreadable or does not match the manifest; the message names it."""


def probe(path: str, first: bool) -> tuple[int, Optional[dict]]:
  """(records in the shard, its decoded record 0 when `first` and it has one).

  Raises:
    ShardError: naming the shard when it is missing, unreadable or its record 0 undecodable.
  """
  if not os.path.exists(path):
    raise ShardError(f"{path}: shard listed in manifest.json is missing (deleted, or the "
                     "dataset is being re-prepared: rerun `python -m data_prep`)")
  try:
    # Its own source, dropped after: the pipeline's source opens each file on first read.
    source = grain.sources.ArrayRecordDataSource([path])
    size = len(source)
    data = source[0] if first and size else None
  except Exception as e:  # pylint: disable=broad-except  (array_record raises RuntimeError)
    raise ShardError(f"{path}: unreadable shard ({_first_line(e)})") from e
  if data is None:
    return size, None
  try:
    return size, records.decode_record(data)
  except ValueError as e:
    raise ShardError(f"{path}: record 0: {e}") from e


def shard_sizes(paths: Sequence[str]) -> list[int]:
  """Records in each shard; ShardError naming the shard when one is missing or unreadable."""
  return [probe(path, first=False)[0] for path in paths]


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"


class DecodedClips:
  """Random-access source of decoded clips with a bounded in-memory cache.

  A training crop needs a few seconds of a clip but reading the record costs the whole clip, so
  clips are kept decoded (up to `cache_mb` per process) and later crops of them are free.
  With `keep`, only those fields are returned and cached (e.g. the tokens for text-to-tokens
  training: a few hundred kB of a many-MB record). A shard that cannot be read (deleted or
  truncated under a running job) raises ShardError naming it, not array_record's traceback.
  """

  def __init__(self, paths: Sequence[str], cache_mb: float = 0,
               keep: Optional[Sequence[str]] = None, sizes: Optional[Sequence[int]] = None):
    self._paths = list(paths)
    sizes = shard_sizes(self._paths) if sizes is None else list(sizes)
    self._offsets = np.cumsum([0] + sizes)
    try:
      self._source = grain.sources.ArrayRecordDataSource(self._paths)
    except Exception as e:  # pylint: disable=broad-except  (array_record raises RuntimeError)
      raise ShardError(f"{_first_line(e)} (a shard of {os.path.dirname(self._paths[0])})") from e
    self._keep = None if keep is None else frozenset(keep)
    self._budget = cache_mb * 2**20
    self._cache: "collections.OrderedDict[int, dict]" = collections.OrderedDict()
    self._bytes = 0

  def __len__(self) -> int:
    return len(self._source)

  def shard_range(self, shard: int) -> tuple[int, int]:
    """[start, stop) global record indices of shard number `shard`."""
    return int(self._offsets[shard]), int(self._offsets[shard + 1])

  def locate(self, index: int) -> tuple[str, int]:
    """(shard path, record index in that shard) of global record `index`."""
    shard = int(np.searchsorted(self._offsets, index, side="right")) - 1
    return self._paths[shard], int(index - self._offsets[shard])

  def decode(self, index: int) -> dict:
    """The whole decoded record `index` (no cache, no `keep`); ShardError naming the shard."""
    try:
      data = self._source[index]
    except Exception as e:  # pylint: disable=broad-except  (array_record raises RuntimeError)
      path, local = self.locate(index)
      state = "gone" if not os.path.exists(path) else "unreadable"
      raise ShardError(f"{path}: cannot read record {local}, the shard is {state} "
                       f"({_first_line(e)}); it was deleted, truncated or rewritten after "
                       "this run opened it (rerun `python -m data_prep`, then restart)") from e
    try:
      return records.decode_record(data)
    except ValueError as e:
      path, local = self.locate(index)
      raise ShardError(f"{path}: record {local}: {e}") from e

  def __getitem__(self, index: int) -> dict:
    clip = self._cache.get(index)
    if clip is not None:
      self._cache.move_to_end(index)
      return clip
    clip = self.decode(index)
    if self._keep is not None:
      clip = {k: v for k, v in clip.items() if k in self._keep}
    size = sum(v.nbytes for v in clip.values() if isinstance(v, np.ndarray))
    if self._budget and size <= self._budget:
      self._cache[index] = clip
      self._bytes += size
      while self._bytes > self._budget:
        _, old = self._cache.popitem(last=False)
        self._bytes -= sum(v.nbytes for v in old.values() if isinstance(v, np.ndarray))
    return clip

  def __repr__(self) -> str:  # Grain checks the source description when restoring state.
    return f"DecodedClips({self._paths})"


def find_clip(data_dir: str, manifest: dict, name: str) -> tuple[str, dict]:
  """(split, manifest entry) of the clip called `name`; AvatarError naming close names if absent."""
  for split, info in manifest["splits"].items():
    for entry in info.get("clips", []):
      if entry["name"] == name:
        return split, entry
  names = [e["name"] for info in manifest["splits"].values() for e in info.get("clips", [])]
  hint = ", ".join(sorted(names)[:5])
  raise AvatarError(f"clip {name!r} is not in {data_dir}/manifest.json ({len(names)} clips, "
                    f"e.g. {hint})")


def read_clip(data_dir: str, manifest: dict, name: str) -> dict:
  """Reads one clip record (docs/data_format.md) by name from the shards."""
  split, entry = find_clip(data_dir, manifest, name)
  path = os.path.join(data_dir, manifest["splits"][split]["shards"][entry["shard"]])
  if not os.path.exists(path):
    raise AvatarError(f"{path}: shard missing (clip {name!r})")
  source = grain.sources.ArrayRecordDataSource([path])
  record = records.decode_record(source[entry["index"]])
  if record.get("name") != name:
    raise AvatarError(f"{path}: record {entry['index']} is {record.get('name')!r}, the manifest "
                      f"says {name!r} (stale manifest?)")
  return record


def split_entries(data_dir: str, manifest: dict, split: str) -> tuple[list[str], list[dict]]:
  """(shard paths, clip entries) of a split; InputError naming the split and what exists."""
  splits = manifest.get("splits", {})
  if split not in splits:
    raise InputError(f"--split {split!r}: not in {data_dir}/manifest.json (has "
                     f"{sorted(splits)})")
  info = splits[split]
  shards = [os.path.join(data_dir, s) for s in info.get("shards", [])]
  entries = list(info.get("clips", []))
  if not shards or not entries:
    raise InputError(f"--split {split!r} of {data_dir}/manifest.json has no clips")
  for path in shards:
    if not os.path.exists(path):
      raise InputError(f"{path}: shard of split {split!r} missing")
  return shards, entries


def iter_split_records(shards: list[str], entries: list[dict]) -> Iterator[tuple[dict, dict]]:
  """Yields (manifest entry, decoded record), reading the split with one Grain source.

  The source concatenates the shards in order, so a clip's global index is its index in its
  shard plus the number of records in the shards before it.
  """
  sizes = [len(grain.sources.ArrayRecordDataSource([p])) for p in shards]
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  source = grain.sources.ArrayRecordDataSource(shards)
  for e in entries:
    s, i = int(e["shard"]), int(e["index"])
    if not (0 <= s < len(shards) and 0 <= i < sizes[s]):
      raise InputError(f"manifest clip {e['name']!r}: shard {s} index {i} is outside the "
                       f"shards ({sizes} records); stale manifest?")
    try:
      record = records.decode_record(source[int(offsets[s] + i)])
    except ValueError as err:
      raise InputError(f"{shards[s]} record {i} (clip {e['name']!r}): {err}") from err
    if record.get("name") != e["name"]:
      raise InputError(f"{shards[s]} record {i} is {record.get('name')!r}, the manifest says "
                       f"{e['name']!r} (stale manifest?)")
    yield e, record
