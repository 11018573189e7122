"""The AV input pipeline: ArrayRecord shards -> random fixed-length crops -> per-host batches.

The global stream is an infinitely repeated, globally shuffled index of crop starts: by default
every start frame of the split is one sample (`data.crop_sampling="frames"`, the official
recipe), or each clip once per pass at a random start ("clips"); element k is a function of k
and the seed alone. A crop reads only the pages of its clip it overlaps (paged shards). Each host reads only the rows of
every global batch that its devices hold (`rows.HostRows`), so a run on N hosts sees the same
global batches, row for row, as a run on one. The order is a pure function of the seed, and the
iterator's state is saved with every checkpoint, so a resumed run sees exactly the batches an
uninterrupted run would have.
"""

import collections
from typing import Any, Optional, Sequence

from absl import logging
import grain
import numpy as np

from avflow_jax.data import clips
from avflow_jax.data import manifest as manifest_lib
from avflow_jax.data import rows as rows_lib

SAMPLINGS = ("frames", "clips")
READ_AHEAD_BATCHES = 2  # Batches each reader process assembles ahead of use.


class ClipStart(grain.transforms.Map):
  """Global start-frame index u -> (clip, start) for frame-uniform sampling.

  Every usable start frame of every clip is one sample (a clip of T frames has
  max(T - crop, 0) + 1), as in the official recipe: long clips are drawn in proportion to
  their length.
  """

  def __init__(self, frames: np.ndarray, crop: int):
    self._ends = np.cumsum(np.maximum(np.asarray(frames, np.int64) - crop, 0) + 1)

  def __len__(self) -> int:
    return int(self._ends[-1])

  def map(self, u: int) -> tuple[int, int]:
    clip = int(np.searchsorted(self._ends, u, side="right"))
    return clip, int(u - (self._ends[clip - 1] if clip else 0))


class RandomStart(grain.transforms.RandomMap):
  """Clip index -> (clip, a uniformly random start) for clip-uniform sampling."""

  def __init__(self, frames: np.ndarray, crop: int):
    self._frames = np.asarray(frames, np.int64)
    self._crop = crop

  def random_map(self, clip: int, rng: np.random.Generator) -> tuple[int, int]:
    t = int(self._frames[clip])
    return int(clip), int(rng.integers(0, max(t - self._crop, 0) + 1))


class ReadCrop(grain.transforms.Map):
  """(clip, start) -> a `crop`-frame window of every stream, normalised.

  Clips shorter than the crop are zero padded; `valid` marks the real frames and `face_mask`
  the frames whose face code was observed. Only the pages the window overlaps are read.
  """

  def __init__(self, source: clips.DecodedClips, crop: int, stats: dict,
               streams: Sequence[str]):
    self.source = source
    self.crop = crop
    self.stats = stats
    self.streams = tuple(streams)
    self.fields = self.streams + ("face_mask",)

  def map(self, element: tuple[int, int]) -> dict[str, Any]:
    clip, start = element
    n = min(self.crop, int(self.source.layout.frames[clip]) - start)
    x = self.source.frames(clip, start, start + n, self.fields)
    out = {}
    for name in self.streams:
      if name not in x:
        raise clips.ShardError(f"clip {self.source.layout.names[clip]!r} has no field "
                               f"{name!r} ({self.source!r})")
      v = np.asarray(x[name], np.float32)
      if name in manifest_lib.NORMALISED:
        v = manifest_lib.normalise(v, self.stats, name)
      out[name] = _pad(v, self.crop)
    mask = x["face_mask"] if "face_mask" in x else np.ones(n, np.float32)
    out["face_mask"] = _pad(np.asarray(mask, np.float32), self.crop)
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
  clip_layout = clips.layout(manifest, split)
  by_shard = collections.defaultdict(list)
  for entry in manifest["splits"][split].get("clips", []):
    by_shard[int(entry["shard"])].append(entry)
  mismatch = "the shards and manifest.json do not belong together (rerun `python -m data_prep`)"
  for s, path in enumerate(paths):
    size, record = clips.probe(path, first=True)
    entries = sorted(by_shard.get(s, []), key=lambda e: int(e["index"]))
    if size != clip_layout.shard_records[s]:
      what = (f"{clip_layout.shard_records[s]} pages of {len(entries)} clips"
              if clip_layout.paged else f"{len(entries)} clips")
      raise clips.ShardError(f"{path}: {size} records, manifest.json lists {what} "
                             f"for {split} shard {s}; {mismatch}")
    starts = np.cumsum([0] + [int(e.get("pages", 1)) if clip_layout.paged else 1
                              for e in entries])[:-1]
    if [int(e["index"]) for e in entries] != starts.tolist():
      raise clips.ShardError(f"{path}: manifest.json's clips of {split} shard {s} do not tile "
                             f"its records; {mismatch}")
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
  return clips.DecodedClips(paths, clip_layout, cache_mb, keep)


def make_crop_dataset(data_dir: str, manifest: dict, split: str, *, global_batch_size: int,
                      crop: int, streams: Sequence[str], seed: int, process_index: int = 0,
                      process_count: int = 1, num_workers: int = 0,
                      rows: Optional[Sequence[int]] = None, cache_mb: float = 0,
                      sampling: str = "frames", read_threads: int = 1) -> grain.IterDataset:
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
    cache_mb: decoded records kept in memory per reader process.
    sampling: "frames": every start frame of the split is one sample, shuffled without
      replacement (long clips drawn in proportion to their length, the official recipe);
      "clips": each clip once per pass, at a random start.
    read_threads: threads reading crops ahead in each reader process (0: read when asked).
      A crop is mostly Python and numpy under the GIL: Grain's default of 16 threads delivers
      about half the crops per second of one (benchmarks/bench_input.py).

  Returns:
    A grain IterDataset of dicts of numpy arrays with a leading per-host batch axis.
  """
  rows = rows_lib.resolve_rows(global_batch_size, rows, process_index, process_count)
  # Opening checks every shard against the manifest (counts, first record's name and dims).
  if sampling not in SAMPLINGS:
    raise ValueError(f"config.data.crop_sampling={sampling!r}: must be one of {SAMPLINGS}")
  source = open_split(data_dir, manifest, split, cache_mb)
  if not source.layout.paged:
    logging.warning("%s holds whole-clip records (format 1): every crop decodes its whole clip. "
                    "`python -m data_prep.repage %s NEW_DIR` writes the paged format, where a "
                    "crop reads only its pages.", data_dir, data_dir)
  frames = source.layout.frames
  # Starts are drawn before the host split, so they depend on the global index only.
  if sampling == "frames":
    starts = ClipStart(frames, crop)
    ds = grain.MapDataset.range(len(starts)).seed(seed).shuffle().repeat().map(starts)
  else:
    ds = grain.MapDataset.range(len(frames)).seed(seed).shuffle().repeat()
    ds = ds.random_map(RandomStart(frames, crop))
  ds = ds.map(ReadCrop(source, crop, manifest_lib.stats_arrays(manifest), streams))
  ds = rows_lib.HostRows(ds, rows, global_batch_size)
  ds = ds.batch(len(rows), drop_remainder=True)
  # Elements here are batches: Grain's default read-ahead of 500 would hold 65 GB at 256 x 345.
  it = ds.to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                            prefetch_buffer_size=READ_AHEAD_BATCHES))
  if num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return it
