"""The output directory's shard generations: read the committed one, write the next.

A run writes its shards under new names (a new generation), then commits them by writing
manifest.json; shards that no manifest names are deleted. A shard whose clips are those of
one of the current manifest's shards is not rewritten: the new manifest names the old file.
"""

import json
import os
import sys
from typing import Optional

from tqdm import tqdm

from avflow_jax.core import constants as C
from avflow_jax.core import files
from data_prep import cache as cache_lib
from data_prep import output
from data_prep import shards as shards_lib

SPLITS = ("train", "val")


def load_old_manifest(path: str) -> Optional[dict]:
  """The current manifest; {} when there is none; None when it exists but cannot be read."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      manifest = json.load(f)
    return manifest if isinstance(manifest, dict) else None
  except (OSError, ValueError):
    return None


def _named_shards(manifest: dict) -> set:
  return {name for info in manifest.get("splits", {}).values()
          for name in info.get("shards", [])}


def _next_generation(directory: str, old: Optional[dict]) -> int:
  """One past every generation in the manifest or on disk, so no existing file is reused."""
  seen = [int((old or {}).get("prep", {}).get("generation", 0))]
  seen += [g for g in map(shards_lib.shard_generation, os.listdir(directory)) if g is not None]
  return max(seen) + 1


def _old_page_frames(old: dict) -> int:
  return int(old.get("page_frames", 0)) if int(old.get("format_version", 1)) == 2 else 0


def _reusable_shards(directory: str, old: dict, page_frames: int) -> dict:
  """{(split, index, count, clip keys): file} of the current manifest's shards on disk."""
  old_keys = old.get("prep", {}).get("shard_keys", {})
  out = {}
  if _old_page_frames(old) != page_frames:
    return out  # Another record layout: every shard is rewritten.
  for split, info in old.get("splits", {}).items():
    names = info.get("shards", [])
    for i, fname in enumerate(names):
      if fname in old_keys and os.path.exists(os.path.join(directory, fname)):
        out[(split, i, len(names), tuple(old_keys[fname]))] = fname
  return out


def remove(paths: list, why: str) -> None:
  """Deletes files; a failure is a warning (what is left is unreferenced, not wrong)."""
  for path in paths:
    try:
      os.remove(path)
    except FileNotFoundError:
      pass
    except OSError as e:
      print(f"warning: could not delete {why} {output.describe(e, path)}", file=sys.stderr)


def _hours(frames: int) -> float:
  return frames / C.FRAME_RATE / 3600.0


def write_shards(args, entries: dict, cache: cache_lib.ClipCache, old: dict,
                 new_files: list) -> tuple[dict, dict, int]:
  """Writes this generation's shards; returns (splits, shard keys, shards written).

  A shard whose clips (and position) are those of one of the current manifest's shards is
  not rewritten: the new manifest names the existing file. Every file written is appended
  to `new_files` as soon as it exists, so a failure later can delete the lot.

  Args:
    args: parsed command-line options (output, shards, page_frames, no_progress).
    entries: split -> [(name, cache key, frames, bytes)] of the clips to write.
    cache: the per-clip cache holding their records.
    old: the current manifest ({} when none or unreadable).
    new_files: the paths written, appended to as they appear.
  """
  generation = _next_generation(args.output, old)
  reusable = _reusable_shards(args.output, old, args.page_frames)
  splits, shard_keys, written = {}, {}, 0
  bar = tqdm(total=sum(len(e) for e in entries.values()), unit="clip", desc="shards",
             disable=args.no_progress, dynamic_ncols=True)
  try:
    for split in SPLITS:
      items = entries[split]
      n = shards_lib.num_shards(args.shards, len(items), sum(e[3] for e in items))
      names, clips = [], []
      for i, group in enumerate(shards_lib.assign(items, n)):
        group_keys = [e[1] for e in group]
        fname = reusable.get((split, i, n, tuple(group_keys)))
        if fname is None:
          fname = shards_lib.shard_name(split, i, n, generation)
          path = os.path.join(args.output, fname)
          with output.writing(path):
            new_files.append(path)
            shards_lib.write_shard(
                path, shards_lib.clip_records((cache.record(k) for k in group_keys),
                                              args.page_frames, on_clip=lambda: bar.update(1)))
          written += 1
        else:
          bar.update(len(group))
        names.append(fname)
        shard_keys[fname] = group_keys
        clips.extend(shards_lib.clip_entries(group, i, args.page_frames))
      splits[split] = {"shards": names, "clips": clips,
                       "hours": _hours(sum(e[2] for e in items))}
  finally:
    bar.close()
  # A run that rewrote nothing leaves the dataset's generation as it was.
  if not written:
    generation = int(old.get("prep", {}).get("generation", 0))
  return splits, {"generation": generation, "shard_keys": shard_keys}, written


def open_output(directory: str, old: Optional[dict]) -> cache_lib.ClipCache:
  """The cache, with what killed runs left behind removed (the lock is held)."""
  with output.writing(directory):
    cache = cache_lib.ClipCache(os.path.join(directory, ".cache"))
    files.remove_partials(cache.directory)
    files.remove_partials(directory)
  if old is not None:
    # Shards of a generation that never got its manifest (a run killed mid-rewrite): no
    # reader can be using them. With an unreadable manifest nothing is deleted here.
    remove(shards_lib.stale_shards(directory, _named_shards(old)), "the unreferenced shard")
  return cache
