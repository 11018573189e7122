"""The AV input pipeline: ArrayRecord shards -> random fixed-length crops -> per-host batches.

The global stream is an infinitely repeated, globally shuffled index of clips, each element one
random crop (a function of its global index and the seed). Each host reads only the rows of
every global batch that its devices hold (`rows.HostRows`), so a run on N hosts sees the same
global batches, row for row, as a run on one. The order is a pure function of the seed, and the
iterator's state is saved with every checkpoint, so a resumed run sees exactly the batches an
uninterrupted run would have.
"""

import collections
from typing import Any, Optional, Sequence

import grain
import numpy as np

from avflow_jax.data import clips
from avflow_jax.data import manifest as manifest_lib
from avflow_jax.data import rows as rows_lib


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
      if name in manifest_lib.NORMALISED:
        x = manifest_lib.normalise(x, self.stats, name)
      out[name] = _pad(x, self.crop)
    mask = np.asarray(clip.get("face_mask", np.ones(t, np.float32)), np.float32)
    out["face_mask"] = _pad(mask[start:start + n], self.crop)
    out["valid"] = _pad(np.ones(n, np.float32), self.crop)
    return out


def _pad(x: np.ndarray, length: int) -> np.ndarray:
  if x.shape[0] == length:
    return x
  return np.pad(x, [(0, length - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def open_split(data_dir: str, manifest: dict, split: str, cache_mb: float = 0,
               keep: Optional[Sequence[str]] = None) -> clips.DecodedClips:
  """The split's records, after checking each shard against the manifest.

  Cheap checks, once per shard: the record count the manifest lists, and the first record's
  name and stream widths (`manifest["dims"]`). Shards from another run than the manifest (a
  re-preparation killed by an older data_prep, files copied by hand) fail here, naming the
  shard, the clip and the field, instead of training on data the statistics do not describe.

  Raises:
    clips.ShardError: a shard is missing, unreadable or disagrees with the manifest.
    ValueError: the split is not in the manifest.
  """
  paths = manifest_lib.shard_paths(data_dir, manifest, split)
  by_shard = collections.defaultdict(list)
  for entry in manifest["splits"][split].get("clips", []):
    by_shard[int(entry["shard"])].append(entry)
  mismatch = "the shards and manifest.json do not belong together (rerun `python -m data_prep`)"
  sizes = []
  for s, path in enumerate(paths):
    size, record = clips.probe(path, first=True)
    sizes.append(size)
    entries = sorted(by_shard.get(s, []), key=lambda e: int(e["index"]))
    if by_shard and len(entries) != size:
      raise clips.ShardError(f"{path}: {size} records, manifest.json lists {len(entries)} "
                             f"for {split} shard {s}; {mismatch}")
    if record is None:
      continue
    name = record.get("name")
    if entries and name != entries[0]["name"]:
      raise clips.ShardError(f"{path}: record 0 is clip {name!r}, manifest.json says "
                             f"{entries[0]['name']!r}; {mismatch}")
    try:
      manifest_lib.check_record_dims(record, manifest, f"{path} record 0 (clip {name!r})")
    except ValueError as e:
      raise clips.ShardError(str(e)) from e
  return clips.DecodedClips(paths, cache_mb, keep, sizes)


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
  rows = rows_lib.resolve_rows(global_batch_size, rows, process_index, process_count)
  # Opening checks every shard against the manifest (counts, first record's name and dims).
  source = open_split(data_dir, manifest, split, cache_mb)
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  # Crops are drawn before the host split, so they depend on the global index only.
  ds = ds.random_map(CropClip(crop, manifest_lib.stats_arrays(manifest), streams))
  ds = rows_lib.HostRows(ds, rows, global_batch_size)
  ds = ds.batch(len(rows), drop_remainder=True)
  it = ds.to_iter_dataset()
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it
