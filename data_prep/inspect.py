"""`python -m data_prep.inspect DIR`: manifest summary as one JSON object + record check.

Every record of every shard is read through grain's ArrayRecordDataSource, decoded and
checked against the manifest (name, frames, per-stream shapes and dtypes). The exit status
is non-zero, with the shard and record named on stderr, when anything does not match.
"""

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np
from tqdm import tqdm

from avflow_jax.core import records


class InspectError(RuntimeError):
  pass


def _expected_shapes(manifest: dict, frames: int) -> dict:
  dims = manifest["dims"]
  shapes = {"mel": ((frames, dims["mel"]), np.float32),
            "tokens": ((frames, dims["tokens"]), np.float32),
            "audio": ((frames * manifest["hop_length"],), np.int16)}
  if dims.get("face"):
    shapes["face"] = ((frames, dims["face"]), np.float32)
    shapes["face_mask"] = ((frames,), np.float32)
  if dims.get("head"):
    shapes["head"] = ((frames, dims["head"]), np.float32)
  if dims.get("participant"):
    shapes["participant"] = ((frames, dims["participant"]), np.float32)
  return shapes


def check_record(clip: dict, entry: dict, manifest: dict) -> None:
  """Raises InspectError when a decoded record disagrees with its manifest entry."""
  if clip.get("name") != entry["name"]:
    raise InspectError(f"name {clip.get('name')!r}, manifest says {entry['name']!r}")
  for key, (shape, dtype) in _expected_shapes(manifest, entry["frames"]).items():
    value = clip.get(key)
    if not isinstance(value, np.ndarray):
      raise InspectError(f"field {key!r} missing")
    if value.shape != shape or value.dtype != dtype:
      raise InspectError(f"field {key!r}: {value.dtype}{value.shape}, expected "
                         f"{np.dtype(dtype)}{shape}")
    if value.dtype.kind == "f" and not np.isfinite(value).all():
      raise InspectError(f"field {key!r}: NaN/Inf")
  if "utterances" in clip:
    json.loads(clip["utterances"])


def summarise(manifest: dict) -> dict:
  """The one-object summary printed by the command."""
  splits = manifest["splits"]
  return {
      "source_format": manifest["source_format"],
      "clips": {s: len(v["clips"]) for s, v in splits.items()},
      "shards": {s: len(v["shards"]) for s, v in splits.items()},
      "hours": {s: round(v["hours"], 6) for s, v in splits.items()},
      "frames": {s: int(sum(c["frames"] for c in v["clips"])) for s, v in splits.items()},
      "dims": manifest["dims"],
      "head_kind": manifest.get("head_kind"),
      "frame_rate": manifest["frame_rate"],
      "sample_rate": manifest["sample_rate"],
      "stats_streams": sorted(manifest.get("stats", {})),
      "face_decoder": manifest.get("face_decoder"),
      "skipped": len(manifest.get("skipped", [])),
  }


def verify(directory: str, manifest: dict, progress: bool = True) -> int:
  """Decodes and checks every record; returns how many were checked."""
  import grain  # pylint: disable=g-import-not-at-top  (heavy; only needed here)
  total = sum(len(v["clips"]) for v in manifest["splits"].values())
  bar = tqdm(total=total, unit="rec", desc="verify", disable=not progress, file=sys.stderr)
  checked = 0
  paged = int(manifest.get("format_version", 1)) == 2
  try:
    for split, info in manifest["splits"].items():
      by_shard = {}
      for entry in info["clips"]:
        by_shard.setdefault(entry["shard"], []).append(entry)
      for i, fname in enumerate(info["shards"]):
        path = os.path.join(directory, fname)
        if not os.path.exists(path):
          raise InspectError(f"{path}: shard listed in the manifest is missing")
        try:
          source = grain.sources.ArrayRecordDataSource([path])
          n = len(source)
        except Exception as e:  # pylint: disable=broad-except
          raise InspectError(f"{path}: unreadable shard ({e})") from e
        entries = sorted(by_shard.get(i, []), key=lambda e: e["index"])
        starts, want = [], 0
        for e in entries:
          starts.append(want)
          want += int(e.get("pages", 1)) if paged else 1
        if n != want or [e["index"] for e in entries] != starts:
          what = f"{want} pages of {len(entries)} clips" if paged else f"{len(entries)} clips"
          raise InspectError(f"{path}: {n} records, manifest lists {what} for "
                             f"{split} shard {i}")
        for entry in entries:
          where = f"{path} record {entry['index']} ({entry['name']})"
          try:
            if paged:
              first = entry["index"]
              clip = records.join_pages([records.decode_record(source[r]) for r in
                                         range(first, first + int(entry["pages"]))])
            else:
              clip = records.decode_record(source[entry["index"]])
            check_record(clip, entry, manifest)
          except (InspectError, ValueError, RuntimeError) as e:
            raise InspectError(f"{where}: {e}") from e
          checked += 1
          bar.update(1)
  finally:
    bar.close()
  return checked


def main(argv: Optional[Sequence[str]] = None) -> int:
  p = argparse.ArgumentParser(prog="python -m data_prep.inspect",
                              description="Summarise and verify a prepared dataset.")
  p.add_argument("directory")
  p.add_argument("--no-verify", action="store_true", help="summary only, read no record")
  p.add_argument("--no-progress", action="store_true")
  args = p.parse_args(argv)
  path = os.path.join(args.directory, "manifest.json")
  try:
    with open(path) as f:
      manifest = json.load(f)
    summary = summarise(manifest)
  except (OSError, ValueError, KeyError, TypeError) as e:
    print(f"error: {path}: unreadable manifest ({e!r})", file=sys.stderr)
    return 1
  if not args.no_verify:
    try:
      summary["records_verified"] = verify(args.directory, manifest, not args.no_progress)
    except InspectError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
  print(json.dumps(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
