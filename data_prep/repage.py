"""`python -m data_prep.repage SRC OUT`: rewrite a prepared dataset with paged records.

Format-1 shards (one record per clip, docs/data_format.md) still train, but every crop decodes
its whole clip. This writes the same clips, statistics and face rig into a new directory OUT in
format 2 (`--page-frames` frames per record), so a crop reads only the pages it overlaps. It
also re-pages a format-2 dataset to another page size. SRC is only read; OUT gets each shard
atomically and its manifest.json last, so an interrupted run leaves no dataset that looks
complete (run it again).
"""

import argparse
import json
import os
import shutil
import sys
from typing import Optional, Sequence

from tqdm import tqdm

from avflow_jax.core import files
from avflow_jax.core import records
from avflow_jax.core.errors import AvatarError
from avflow_jax.data import clips
from avflow_jax.data import manifest as manifest_lib
from data_prep import output
from data_prep import shards as shards_lib

MANIFEST = manifest_lib.MANIFEST


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m data_prep.repage", description=__doc__.split("\n")[0])
  p.add_argument("src", help="a prepared dataset (directory with manifest.json)")
  p.add_argument("out", help="new directory for the paged dataset (must not hold a manifest)")
  p.add_argument("--page-frames", type=int, default=shards_lib.DEFAULT_PAGE_FRAMES,
                 help="frames per record page (default %(default)s)")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  if args.page_frames <= 0:
    p.error(f"--page-frames {args.page_frames}: must be > 0")
  return args


def _page_entries(entries: list, page_frames: int) -> list:
  """Manifest entries of `entries` (one shard, in record order) after paging."""
  group = [(e["name"], None, int(e["frames"])) for e in entries]
  shard = int(entries[0]["shard"]) if entries else 0
  paged = shards_lib.clip_entries(group, shard, page_frames)
  keep = [{k: v for k, v in e.items() if k not in ("index", "pages")} for e in entries]
  return [{**old, **new} for old, new in zip(keep, paged)]


def repage(src: str, out: str, page_frames: int, progress: bool = True) -> dict:
  """Writes SRC's clips into OUT with `page_frames`-frame records; returns the new manifest.

  Raises:
    AvatarError: SRC unreadable, or OUT already holds a dataset.
  """
  manifest = manifest_lib.load_manifest(src)
  old_pages = clips.page_frames(manifest)
  if os.path.exists(os.path.join(out, MANIFEST)):
    raise AvatarError(f"{out}: already holds a dataset ({MANIFEST}); pick a new directory")
  output.check_directory(out)
  os.makedirs(out, exist_ok=True)
  new = json.loads(json.dumps(manifest))
  new.update(shards_lib.format_fields(page_frames))
  new.pop("prep", None)  # Generation bookkeeping of SRC's `python -m data_prep` runs.
  total = sum(len(info.get("clips", [])) for info in manifest["splits"].values())
  bar = tqdm(total=total, unit="clip", desc="repage", disable=not progress, dynamic_ncols=True)
  try:
    for split, info in manifest["splits"].items():
      shard_files, entries = info.get("shards", []), info.get("clips", [])
      paths = [os.path.join(src, s) for s in shard_files]
      new_entries = []
      for s, fname in enumerate(shard_files):
        mine = [e for e in entries if int(e["shard"]) == s]
        mine.sort(key=lambda e: int(e["index"]))
        whole = (records.encode_record(clip) for _, clip in
                 clips.iter_split_records(paths, mine, old_pages))
        path = os.path.join(out, fname)
        with output.writing(path):
          shards_lib.write_shard(path, shards_lib.clip_records(whole, page_frames,
                                                               on_clip=lambda: bar.update(1)))
        new_entries.extend(_page_entries(mine, page_frames))
      new["splits"][split]["clips"] = new_entries
  finally:
    bar.close()
  rig = manifest.get("face_decoder")
  if rig:
    with output.writing(os.path.join(out, rig)):
      shutil.copyfile(os.path.join(src, rig), os.path.join(out, rig))
  path = os.path.join(out, MANIFEST)
  with output.writing(path):
    files.write_atomic(path, json.dumps(new, indent=1).encode(), fsync=True)
  return new


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = parse_args(argv)
  try:
    new = repage(args.src, args.out, args.page_frames, progress=not args.no_progress)
  except (AvatarError, ValueError, OSError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  n = sum(len(i["clips"]) for i in new["splits"].values())
  print(f"{args.out}: {n} clips in {args.page_frames}-frame pages (format 2)")
  return 0


if __name__ == "__main__":
  sys.exit(main())
