"""The AV input pipeline: ArrayRecord shards -> random fixed-length crops -> per-host batches.

The global stream is an infinitely repeated, globally shuffled index of clips, each element one
random crop (a function of its global index and the seed). Each host reads only the rows of
every global batch that its devices hold (`rows.HostRows`), so a run on N hosts sees the same
global batches, row for row, as a run on one. The order is a pure function of the seed, and the
iterator's state is saved with every checkpoint, so a resumed run sees exactly the batches an
uninterrupted run would have.
"""

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
  source = clips.DecodedClips(manifest_lib.shard_paths(data_dir, manifest, split), cache_mb)
  ds = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
  # Crops are drawn before the host split, so they depend on the global index only.
  ds = ds.random_map(CropClip(crop, manifest_lib.stats_arrays(manifest), streams))
  ds = rows_lib.HostRows(ds, rows, global_batch_size)
  ds = ds.batch(len(rows), drop_remainder=True)
  it = ds.to_iter_dataset()
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it
