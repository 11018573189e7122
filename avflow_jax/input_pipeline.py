"""Grain input pipeline: ArrayRecord shards -> random fixed-length crops -> per-host batches.

The global stream is an infinitely repeated, globally shuffled index of clips, each element one
random crop (a function of its global index and the seed). Global batch k is elements
[k * B, (k + 1) * B) of that stream, and each host reads only the rows of it that its devices
hold, so a run on N hosts sees the same global batches, row for row, as a run on one. The order is a pure function of the seed, and the
iterator's state is saved with every checkpoint, so a resumed run sees exactly the batches an
uninterrupted run would have.
"""

import collections
import json
import os
from typing import Any, Optional, Sequence

import grain
import numpy as np

from avflow_jax import records

# Streams normalised with the manifest statistics before they reach the model.
NORMALISED = ("mel", "tokens", "face", "head", "participant")


def load_manifest(data_dir: str) -> dict:
  """Reads DATA_DIR/manifest.json with a clear error when it is missing or malformed."""
  path = os.path.join(os.path.expanduser(data_dir), "manifest.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no manifest; prepare shards with `python -m data_prep`")
  try:
    with open(path) as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  for key in ("dims", "splits", "stats"):
    if key not in manifest:
      raise ValueError(f"{path}: missing field {key!r}")
  return manifest


def shard_paths(data_dir: str, manifest: dict, split: str) -> list[str]:
  if split not in manifest["splits"]:
    raise ValueError(f"split {split!r} is not in the manifest of {data_dir} (has "
                     f"{sorted(manifest['splits'])})")
  shards = manifest["splits"][split]["shards"]
  if not shards:
    raise ValueError(f"split {split!r} of {data_dir} has no shards")
  return [os.path.join(os.path.expanduser(data_dir), s) for s in shards]


def stats_arrays(manifest: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{stream: (mean, std)} as float32 arrays."""
  out = {}
  for name, s in manifest["stats"].items():
    out[name] = (np.asarray(s["mean"], np.float32),
                 np.maximum(np.asarray(s["std"], np.float32), 1e-5))
  return out


def normalise(x: np.ndarray, stats, name: str) -> np.ndarray:
  mean, std = stats[name]
  return ((x - mean) / std).astype(np.float32)


def denormalise(x, stats, name: str):
  mean, std = stats[name]
  return x * std + mean


class DecodedClips:
  """Random-access source of decoded clips with a bounded in-memory cache.

  A training crop needs a few seconds of a clip but reading the record costs the whole clip, so
  clips are kept decoded (up to `cache_mb` per process) and later crops of them are free.
  With `keep`, only those fields are returned and cached (e.g. the tokens for text-to-tokens
  training: a few hundred kB of a many-MB record).
  """

  def __init__(self, paths: Sequence[str], cache_mb: float = 0,
               keep: Optional[Sequence[str]] = None):
    self._source = grain.sources.ArrayRecordDataSource(list(paths))
    self._paths = list(paths)
    self._keep = None if keep is None else frozenset(keep)
    self._budget = cache_mb * 2**20
    self._cache: "collections.OrderedDict[int, dict]" = collections.OrderedDict()
    self._bytes = 0

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict:
    clip = self._cache.get(index)
    if clip is not None:
      self._cache.move_to_end(index)
      return clip
    clip = records.decode_record(self._source[index])
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


class CropClip(grain.transforms.RandomMap):
  """Decodes a record and cuts a random `crop`-frame window of every per-frame stream.

  Clips shorter than the crop are zero padded; `valid` marks the real frames and `face_mask`
  the frames whose face code was observed.
  """

  def __init__(self, crop: int, stats: dict, streams: Sequence[str]):
    self.crop = crop
    self.stats = stats
    self.streams = tuple(streams)

  def random_map(self, clip: dict, rng: np.random.Generator) -> dict[str, Any]:
    t = clip["mel"].shape[0]
    start = int(rng.integers(0, max(t - self.crop, 0) + 1))
    n = min(self.crop, t)
    out = {}
    for name in self.streams:
      x = np.asarray(clip[name], np.float32)[start:start + n]
      if name in NORMALISED:
        x = normalise(x, self.stats, name)
      out[name] = _pad(x, self.crop)
    mask = np.asarray(clip.get("face_mask", np.ones(t, np.float32)), np.float32)
    out["face_mask"] = _pad(mask[start:start + n], self.crop)
    out["valid"] = _pad(np.ones(n, np.float32), self.crop)
    return out


def _pad(x: np.ndarray, length: int) -> np.ndarray:
  if x.shape[0] == length:
    return x
  return np.pad(x, [(0, length - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


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
    pc, pi = jax.process_count(), jax.process_index()
    local = global_batch_size // pc
    return list(range(pi * local, (pi + 1) * local))
  index_map = batch_sharding.addressable_devices_indices_map((global_batch_size,))
  rows = set()
  for idx in index_map.values():
    rows.update(range(*idx[0].indices(global_batch_size)))
  return sorted(rows)


def make_crop_dataset(data_dir: str, manifest: dict, split: str, *, global_batch_size: int,
                      crop: int, streams: Sequence[str], seed: int, process_index: int = 0,
                      process_count: int = 1, num_workers: int = 0,
                      rows: Optional[Sequence[int]] = None,
                      cache_mb: float = 0) -> grain.IterDataset:
  """Per-host batches of random crops, infinitely repeated.

  Args:
    data_dir: shard directory with manifest.json.
    manifest: its parsed manifest.
    split: manifest split.
    global_batch_size: batch over all hosts; each host yields global / process_count examples.
    crop: frames per example.
    streams: record streams to include (e.g. mel, tokens, face, head).
    seed: seeds the shuffle and the crops.
    process_index, process_count: this host and the number of hosts.
    num_workers: Grain multiprocessing workers (0 = in process).
    rows: the rows of each global batch this host reads (from the batch sharding, see
      `process_rows`); default: the contiguous slice `process_index` of `process_count`.
    cache_mb: decoded clips kept in memory per reader process.

  Returns:
    A grain IterDataset of dicts of numpy arrays with a leading per-host batch axis.
  """
  if global_batch_size % process_count:
    raise ValueError(f"config.batch_size={global_batch_size} is not divisible by the "
                     f"{process_count} processes")
  if rows is None:
    local = global_batch_size // process_count
    rows = range(process_index * local, (process_index + 1) * local)
  source = DecodedClips(shard_paths(data_dir, manifest, split), cache_mb)
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  # Crops are drawn before the host split, so they depend on the global index only.
  ds = ds.random_map(CropClip(crop, stats_arrays(manifest), streams))
  ds = HostRows(ds, list(rows), global_batch_size)
  ds = ds.batch(len(rows), drop_remainder=True)
  it = ds.to_iter_dataset()
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it
