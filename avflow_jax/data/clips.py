"""Reading clip records from the shards: a cached random-access source, and one clip by name."""

import collections
import dataclasses
import os
import threading
from typing import Any, Iterator, Optional, Sequence

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


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"


@dataclasses.dataclass(frozen=True)
class ClipLayout:
  """Where the clips of a split live in its shards (read from the manifest).

  Clip i (in shard order) is records [first[i], first[i] + pages[i]) of the shards taken
  end to end. Format 1 stores one record per clip (`page_frames` 0, every `pages` 1);
  format 2 stores `page_frames`-frame pages (docs/data_format.md).
  """
  first: np.ndarray  # int64 (clips,): global index of the clip's first record.
  pages: np.ndarray  # int64 (clips,): records of the clip.
  frames: np.ndarray  # int64 (clips,): frames of the clip.
  names: tuple[str, ...]
  shard_records: tuple[int, ...]  # Records in each shard.
  page_frames: int  # 0: one whole-clip record per clip.

  @property
  def paged(self) -> bool:
    return self.page_frames > 0

  def __len__(self) -> int:
    return len(self.first)


def page_frames(manifest: dict) -> int:
  """Frames per page of a manifest's shards (0 for format 1: one record per clip).

  Raises:
    ValueError: an unknown format version or a bad page size.
  """
  version = int(manifest.get("format_version", 1))
  if version == 1:
    return 0
  if version != 2:
    raise ValueError(f"manifest.json format_version {version}: this avflow_jax reads "
                     "formats 1 and 2 (docs/data_format.md); update avflow_jax")
  size = manifest.get("page_frames")
  if not isinstance(size, int) or size <= 0:
    raise ValueError(f"manifest.json page_frames {size!r}: format 2 needs a positive integer")
  return size


def layout(manifest: dict, split: str) -> ClipLayout:
  """The split's `ClipLayout` from its manifest entries.

  Raises:
    ValueError: the split is absent, or an entry's shard is outside the split's shards.
  """
  if split not in manifest.get("splits", {}):
    raise ValueError(f"split {split!r} is not in the manifest (has "
                     f"{sorted(manifest.get('splits', {}))})")
  info = manifest["splits"][split]
  size = page_frames(manifest)
  entries = sorted(info.get("clips", []), key=lambda e: (int(e["shard"]), int(e["index"])))
  n_shards = len(info.get("shards", []))
  counts = [0] * n_shards
  for e in entries:
    s = int(e["shard"])
    if not 0 <= s < n_shards:
      raise ValueError(f"manifest.json clip {e['name']!r}: shard {s} is not one of the "
                       f"{n_shards} shards of split {split!r}")
    counts[s] += int(e.get("pages", 1)) if size else 1
  offsets = np.cumsum([0] + counts)
  first = np.array([offsets[int(e["shard"])] + int(e["index"]) for e in entries], np.int64)
  pages = np.array([int(e.get("pages", 1)) if size else 1 for e in entries], np.int64)
  frames = np.array([int(e["frames"]) for e in entries], np.int64)
  return ClipLayout(first, pages, frames, tuple(e["name"] for e in entries), tuple(counts),
                    size)


class ShardFiles:
  """A split's shards read by global record index (records of the shards taken end to end).

  Each shard is opened on first use with one ArrayRecord reader shared by the threads of a
  process, and reopened in each Grain worker (the readers are not pickled). A crop's pages
  are consecutive records, read with one range read and no thread pool: about half the CPU of
  `grain.sources.ArrayRecordDataSource.__getitems__` for the 7 pages of a 345-frame crop.
  """

  # Readahead is useless for random crops; one decoding thread keeps a reader on its core.
  OPTIONS = "readahead_buffer_size:0,max_parallelism:1"
  BUFFER_BYTES = 256 << 10

  def __init__(self, paths: Sequence[str], shard_records: Sequence[int]):
    self.paths = list(paths)
    self.offsets = np.cumsum([0] + list(shard_records))
    self._readers: list = [None] * len(self.paths)
    self._lock = threading.Lock()

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_readers"], state["_lock"] = [None] * len(self.paths), None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._lock = threading.Lock()

  def locate(self, record: int) -> tuple[int, int]:
    """(shard, record index in that shard) of global record `record`."""
    shard = int(np.searchsorted(self.offsets, record, side="right")) - 1
    return shard, int(record - self.offsets[shard])

  def _reader(self, shard: int):
    reader = self._readers[shard]
    if reader is None:
      from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
      with self._lock:
        reader = self._readers[shard]
        if reader is None:
          reader = array_record_module.ArrayRecordReader(
              self.paths[shard], self.OPTIONS, file_reader_buffer_size=self.BUFFER_BYTES)
          self._readers[shard] = reader
    return reader

  def read(self, records_: Sequence[int]) -> list[bytes]:
    """The raw records (global indices, any order); runs of consecutive ones read at once."""
    out, i = [], 0
    records_ = [int(r) for r in records_]
    while i < len(records_):
      shard, local = self.locate(records_[i])
      j = i + 1
      while (j < len(records_) and records_[j] == records_[j - 1] + 1
             and records_[j] < self.offsets[shard + 1]):
        j += 1
      out.extend(self._reader(shard).read(local, local + j - i))
      i = j
    return out


class DecodedClips:
  """Random-access source of the decoded clips of a split, with a bounded in-memory cache.

  `clips[i]` is clip i (in shard order) whole; `frames(i, start, stop, fields)` reads only
  what a crop needs: the pages it overlaps in paged shards (format 2), the cached whole
  clip in format 1, where a crop costs the whole record (`cache_mb` of decoded records per
  process keeps later crops of it free). With `keep`, `clips[i]` returns and caches only
  those fields (e.g. the tokens for text-to-tokens training). A shard that cannot be read
  (deleted or truncated under a running job) raises ShardError naming it, not
  array_record's traceback.
  """

  def __init__(self, paths: Sequence[str], clip_layout: ClipLayout, cache_mb: float = 0,
               keep: Optional[Sequence[str]] = None):
    self._paths = list(paths)
    self.layout = clip_layout
    self._files = ShardFiles(self._paths, clip_layout.shard_records)
    self._keep = None if keep is None else frozenset(keep)
    self._budget = cache_mb * 2**20
    self._cache: "collections.OrderedDict[Any, dict]" = collections.OrderedDict()
    self._bytes = 0

  def __len__(self) -> int:
    return len(self.layout)

  def locate(self, record: int) -> tuple[str, int]:
    """(shard path, record index in that shard) of global record `record`."""
    shard, local = self._files.locate(record)
    return self._paths[shard], local

  def read_bytes(self, records_: Sequence[int]) -> list[bytes]:
    """The raw records (global indices); what every read of this source goes through."""
    return self._files.read(records_)

  def _read(self, records_: Sequence[int]) -> list[dict]:
    """Decoded records (global indices); ShardError naming the shard and record."""
    try:
      data = self.read_bytes(records_)
    except Exception as e:  # pylint: disable=broad-except  (array_record raises RuntimeError)
      path, local = self.locate(records_[0])
      state = "gone" if not os.path.exists(path) else "unreadable"
      raise ShardError(f"{path}: cannot read record {local}, the shard is {state} "
                       f"({_first_line(e)}); it was deleted, truncated or rewritten after "
                       "this run opened it (rerun `python -m data_prep`, then restart)") from e
    out = []
    for r, d in zip(records_, data):
      try:
        out.append(records.decode_record(d))
      except ValueError as e:
        path, local = self.locate(r)
        raise ShardError(f"{path}: record {local}: {e}") from e
    return out

  def decode(self, index: int) -> dict:
    """The whole decoded clip `index` (no cache, no `keep`); ShardError naming the shard."""
    first, n = int(self.layout.first[index]), int(self.layout.pages[index])
    decoded = self._read(range(first, first + n))
    if not self.layout.paged:
      return decoded[0]
    try:
      return records.join_pages(decoded)
    except ValueError as e:
      path, local = self.locate(first)
      raise ShardError(f"{path}: records {local}..{local + n - 1}: {e}") from e

  def __getitem__(self, index: int) -> dict:
    clip = self._cached(("clip", index))
    if clip is None:
      clip = self.decode(index)
      if self._keep is not None:
        clip = {k: v for k, v in clip.items() if k in self._keep}
      self._store(("clip", index), clip)
    return clip

  def frames(self, index: int, start: int, stop: int,
             fields: Sequence[str]) -> dict[str, np.ndarray]:
    """Frames [start, stop) of `fields` of clip `index` (raw values, as stored).

    Args:
      index: the clip.
      start, stop: 0 <= start < stop <= the clip's frames.
      fields: per-frame fields (`records.FRAME_FIELDS`); those the clip lacks are left out.
    """
    if not self.layout.paged:
      clip = self[index]
      return {k: np.asarray(clip[k])[start:stop] for k in fields if k in clip}
    size = self.layout.page_frames
    first = int(self.layout.first[index])
    p0, p1 = start // size, (stop - 1) // size
    pages = [None] * (p1 - p0 + 1)
    missing = []
    for j in range(len(pages)):
      pages[j] = self._cached(("page", first + p0 + j, tuple(fields)))
      if pages[j] is None:
        missing.append(j)
    if missing:
      for j, page in zip(missing, self._read([first + p0 + j for j in missing])):
        if page.get("page") != p0 + j:
          path, local = self.locate(first + p0 + j)
          raise ShardError(f"{path}: record {local} is page {page.get('page')} of clip "
                           f"{page.get('name')!r}, the manifest says page {p0 + j} of "
                           f"{self.layout.names[index]!r} (stale manifest?)")
        page = {k: v for k, v in page.items() if k in fields}
        self._store(("page", first + p0 + j, tuple(fields)), page)
        pages[j] = page
    return records.slice_pages(pages, p0, start, stop, size, fields)

  def _cached(self, key) -> Optional[dict]:
    value = self._cache.get(key)
    if value is not None:
      self._cache.move_to_end(key)
    return value

  def _store(self, key, value: dict) -> None:
    size = _nbytes(value)
    if not self._budget or size > self._budget:
      return
    self._cache[key] = value
    self._bytes += size
    while self._bytes > self._budget:
      _, old = self._cache.popitem(last=False)
      self._bytes -= _nbytes(old)

  def __repr__(self) -> str:  # Grain checks the source description when restoring state.
    return f"DecodedClips({self._paths})"


def _nbytes(value: dict) -> int:
  return sum(v.nbytes for v in value.values() if isinstance(v, np.ndarray))


def open_clips(data_dir: str, manifest: dict, split: str, cache_mb: float = 0,
               keep: Optional[Sequence[str]] = None) -> DecodedClips:
  """The split's clips (no check of the shards beyond opening them; see crops.open_split)."""
  paths = [os.path.join(os.path.expanduser(data_dir), s)
           for s in manifest["splits"][split]["shards"]]
  return DecodedClips(paths, layout(manifest, split), cache_mb, keep)


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
  try:
    record = _read_entry(grain.sources.ArrayRecordDataSource([path]), 0, entry,
                         page_frames(manifest))
  except ValueError as e:
    raise AvatarError(f"{path}: {e}") from e
  if record.get("name") != name:
    raise AvatarError(f"{path}: record {entry['index']} is {record.get('name')!r}, the manifest "
                      f"says {name!r} (stale manifest?)")
  return record


def _read_entry(source, offset: int, entry: dict, page_size: int) -> dict:
  """The whole clip of manifest `entry` from `source` (its shard starts at record `offset`)."""
  first = offset + int(entry["index"])
  if not page_size:
    return records.decode_record(source[first])
  n = int(entry.get("pages", 1))
  pages = [records.decode_record(d) for d in source.__getitems__(list(range(first, first + n)))]
  return records.join_pages(pages)


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


def iter_split_records(shards: list[str], entries: list[dict],
                       page_size: int = 0) -> Iterator[tuple[dict, dict]]:
  """Yields (manifest entry, decoded whole clip), reading the split with one Grain source.

  Args:
    shards: the split's shard paths (`split_entries`).
    entries: the manifest entries of the clips to read.
    page_size: the manifest's `page_frames(manifest)` (0: one record per clip).

  The source concatenates the shards in order, so a clip's global index is its index in its
  shard plus the number of records in the shards before it.
  """
  sizes = [len(grain.sources.ArrayRecordDataSource([p])) for p in shards]
  offsets = np.concatenate([[0], np.cumsum(sizes)])
  source = grain.sources.ArrayRecordDataSource(shards)
  for e in entries:
    s, i = int(e["shard"]), int(e["index"])
    n = int(e.get("pages", 1)) if page_size else 1
    if not (0 <= s < len(shards) and 0 <= i and i + n <= sizes[s]):
      raise InputError(f"manifest clip {e['name']!r}: shard {s} index {i} is outside the "
                       f"shards ({sizes} records); stale manifest?")
    try:
      record = _read_entry(source, int(offsets[s]), e, page_size)
    except ValueError as err:
      raise InputError(f"{shards[s]} record {i} (clip {e['name']!r}): {err}") from err
    if record.get("name") != e["name"]:
      raise InputError(f"{shards[s]} record {i} is {record.get('name')!r}, the manifest says "
                       f"{e['name']!r} (stale manifest?)")
    yield e, record
