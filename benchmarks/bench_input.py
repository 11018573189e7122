r"""Input-pipeline throughput: AV training crops per second, and the steps/s that can feed.

  python benchmarks/bench_input.py [--data DIR] [--corpus-mb 2048] [--workers 0,1,2]

Builds a corpus by replicating the train clips of a prepared dataset (by default the 30-minute
demo shards, generated once into ~/.cache/avflow_jax) until its decoded size is at least
--corpus-mb, written once as paged shards (format 2, the default of `python -m data_prep`) and
once as whole-clip records (format 1). Then, for each format and each number of Grain workers,
it pulls batches from the training pipeline itself (`data.crops.make_crop_dataset`: frame-uniform
sampling, crop 345, every AV stream with the face mask, normalised, batched) with the cache off
(`data.cache_mb=0`) and reports crops per second of wall time and per CPU-second of the
processes doing the reading (one core's rate). It also reads 300 crops through one source,
counting the record bytes each crop reads against the crop's own bytes. From the best rate it
derives the train steps/s one host with this many cores can feed at batch 16 and 256 × 345.

Prints progress lines, then as its last line one JSON object.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from avflow_jax.core import constants  # pylint: disable=wrong-import-position
from avflow_jax.core import records  # pylint: disable=wrong-import-position
from avflow_jax.data import clips  # pylint: disable=wrong-import-position
from avflow_jax.data import crops  # pylint: disable=wrong-import-position
from avflow_jax.data import manifest as manifest_lib  # pylint: disable=wrong-import-position
from data_prep import shards as shards_lib  # pylint: disable=wrong-import-position

STREAMS = ("mel", "tokens", "face", "head")
OFFICIAL_A100_CROPS_PER_S = 16 * 7.7  # The official recipe: batch 16 at about 7.7 steps/s.


def build_corpus(base: str, out: str, page_frames: int, target_mb: float,
                 shard_mb: float = 512) -> dict:
  """Writes copies of `base`'s train clips (renamed `name~k`) until `target_mb` decoded."""
  manifest = manifest_lib.load_manifest(base)
  shard_paths, entries = clips.split_entries(base, manifest, "train")
  decoded = [clip for _, clip in clips.iter_split_records(shard_paths, entries,
                                                          clips.page_frames(manifest))]
  clip_mb = [sum(np.asarray(v).nbytes for v in c.values() if isinstance(v, np.ndarray)) / 2**20
             for c in decoded]
  copies = max(1, int(np.ceil(target_mb / sum(clip_mb))))
  os.makedirs(out, exist_ok=True)
  names, new_entries, group, group_mb = [], [], [], 0.0

  def flush():
    fname = f"train-{len(names):05d}.array_record"
    encoded = (records.encode_record(c) for c in group)
    shards_lib.write_shard(os.path.join(out, fname),
                           shards_lib.clip_records(encoded, page_frames))
    items = [(c["name"], None, int(c["mel"].shape[0])) for c in group]
    new_entries.extend(shards_lib.clip_entries(items, len(names), page_frames))
    names.append(fname)

  for k in range(copies):
    for clip, mb in zip(decoded, clip_mb):
      group.append({**clip, "name": f"{clip['name']}~{k}"})
      group_mb += mb
      if group_mb >= shard_mb:
        flush()
        group, group_mb = [], 0.0
  if group:
    flush()
  new = {key: v for key, v in manifest.items() if key not in ("splits", "prep")}
  new.update(shards_lib.format_fields(page_frames))
  frames = sum(e["frames"] for e in new_entries)
  new["splits"] = {"train": {"shards": names, "clips": new_entries,
                             "hours": frames / constants.FRAME_RATE / 3600}}
  with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(new, f)
  return {"copies": copies, "clips": len(new_entries), "hours": new["splits"]["train"]["hours"],
          "decoded_mb": copies * sum(clip_mb),
          "disk_mb": sum(os.path.getsize(os.path.join(out, n)) for n in names) / 2**20}


def _cpu_seconds() -> float:
  """CPU seconds of this process and its live child processes (the Grain workers)."""
  try:
    import psutil  # pylint: disable=g-import-not-at-top  (optional: present with the test extra)
  except ImportError:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return own.ru_utime + own.ru_stime
  total = 0.0
  me = psutil.Process()
  for proc in [me] + me.children(recursive=True):
    try:
      t = proc.cpu_times()
      total += t.user + t.system
    except psutil.Error:
      pass
  return total


def time_pipeline(data_dir: str, workers: int, batch: int, crop: int, seconds: float) -> dict:
  """Crops/s (wall and per CPU-second) of the training pipeline over `data_dir`."""
  manifest = manifest_lib.load_manifest(data_dir)
  ds = crops.make_crop_dataset(data_dir, manifest, "train", global_batch_size=batch, crop=crop,
                               streams=STREAMS, seed=0, num_workers=workers, cache_mb=0)
  it = iter(ds)
  for _ in range(2 + 2 * workers):  # Workers start, import and fill their buffers.
    next(it)
  cpu0, t0, n = _cpu_seconds(), time.perf_counter(), 0
  while time.perf_counter() - t0 < seconds:
    x = next(it)
    n += x["mel"].shape[0]
  wall = time.perf_counter() - t0
  cpu = _cpu_seconds() - cpu0
  del it
  return {"workers": workers, "crops_per_s": n / wall, "crops_per_cpu_s": n / max(cpu, 1e-9),
          "cpu_per_wall": cpu / wall}


def bytes_per_crop(data_dir: str, crop: int, n: int = 300) -> dict:
  """Record bytes read per crop over the crop's own bytes, for `n` frame-uniform crops."""
  manifest = manifest_lib.load_manifest(data_dir)
  source = crops.open_split(data_dir, manifest, "train")
  read = []
  original = source.read_bytes

  def counting(indices):
    out = original(indices)
    read.extend(len(d) for d in out)
    return out

  source.read_bytes = counting
  starts = crops.ClipStart(source.layout.frames, crop)
  reader = crops.ReadCrop(source, crop, manifest_lib.stats_arrays(manifest), STREAMS)
  rng = np.random.default_rng(0)
  ratios = []
  for u in rng.integers(0, len(starts), n):
    read.clear()
    clip, start = starts.map(int(u))
    stop = min(start + crop, int(source.layout.frames[clip]))
    raw = source.frames(clip, start, stop, reader.fields)  # What the crop itself holds.
    ratios.append(sum(read) / sum(v.nbytes for v in raw.values()))
  return {"read_over_crop_mean": float(np.mean(ratios)), "read_over_crop_max": float(max(ratios))}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--data", default=None, help="prepared dataset to replicate (default: the "
                  "30-minute demo shards)")
  ap.add_argument("--corpus-mb", type=float, default=2048,
                  help="decoded size of the replicated corpus (>= 10x any cache you compare)")
  ap.add_argument("--workers", default="0,1,2", help="Grain worker counts to time")
  ap.add_argument("--crop", type=int, default=345)
  ap.add_argument("--batch", type=int, default=16, help="batch the pipeline assembles")
  ap.add_argument("--seconds", type=float, default=15.0, help="timed seconds per setting")
  ap.add_argument("--page-frames", type=int, default=shards_lib.DEFAULT_PAGE_FRAMES)
  ap.add_argument("--skip-format1", action="store_true", help="time the paged shards only")
  ap.add_argument("--root", default=None, help="where to build the corpus (default: a temp dir)")
  args = ap.parse_args()
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  workers = [int(w) for w in args.workers.split(",") if w.strip()]
  base = args.data
  if base is None:
    from avflow_jax.data import demo_corpus  # pylint: disable=g-import-not-at-top
    base = demo_corpus.ensure_demo_shards("~/.cache/avflow_jax", 30.0, 0)
  result = {"crop": args.crop, "batch": args.batch, "cache_mb": 0, "cores": os.cpu_count(),
            "streams": list(STREAMS) + ["face_mask"]}
  with tempfile.TemporaryDirectory(dir=args.root) as root:
    formats = [("paged", args.page_frames)] + ([] if args.skip_format1 else [("whole", 0)])
    for label, page in formats:
      t0 = time.perf_counter()
      data = os.path.join(root, label)
      corpus = build_corpus(base, data, page, args.corpus_mb)
      print(f"{label}: {corpus['clips']} clips, {corpus['hours']:.1f} h, "
            f"{corpus['decoded_mb']:.0f} MB decoded, {corpus['disk_mb']:.0f} MB on disk "
            f"(built in {time.perf_counter() - t0:.0f} s)", flush=True)
      out = {"corpus": corpus, "page_frames": page, **bytes_per_crop(data, args.crop)}
      out["runs"] = []
      for w in (workers if label == "paged" else [0]):
        r = time_pipeline(data, w, args.batch, args.crop, args.seconds)
        print(f"  {label} workers={w}: {r['crops_per_s']:.0f} crops/s, "
              f"{r['crops_per_cpu_s']:.0f} per CPU-second (read {out['read_over_crop_mean']:.2f}x "
              "the crop's bytes)", flush=True)
        out["runs"].append(r)
      result[label] = out
      # Free the disk before the next copy.
      for f in os.listdir(data):
        os.remove(os.path.join(data, f))
  paged = result["paged"]["runs"]
  best = max(r["crops_per_s"] for r in paged)
  per_core = max(r["crops_per_cpu_s"] for r in paged)
  result.update({
      "best_crops_per_s": best, "crops_per_core_s": per_core,
      "feeds_steps_per_s_batch16": best / 16, "feeds_steps_per_s_batch256": best / 256,
      "per_core_feeds_steps_per_s_batch16": per_core / 16,
      "per_core_feeds_steps_per_s_batch256": per_core / 256,
      "official_a100_crops_per_s": OFFICIAL_A100_CROPS_PER_S,
  })
  if "whole" in result:
    result["paged_over_whole_in_process"] = (paged[0]["crops_per_s"]
                                             / result["whole"]["runs"][0]["crops_per_s"])
  print(json.dumps(result))


if __name__ == "__main__":
  main()
