"""`python -m data_prep`: raw corpus -> ArrayRecord shards + manifest.json.

Stages, all under the output directory's lock: plan (list clips, splits, dataset options)
-> process clips in a process pool into the per-clip cache (resumable) -> stats over the
train split -> shards of a new generation (atomic, new names) -> manifest.json (atomic, the
commit) -> delete the shards no manifest names -> summary. Output-side OS errors stop the
run (data_prep/output.py); input-side ones skip the clip. The pool is data_prep/clip_pool.py,
the shard generations data_prep/generations.py, the manifest's content data_prep/run_manifest.py.
"""

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
import traceback
from typing import Optional, Sequence

from avflow_jax.core import files
from avflow_jax.core import locks
from avflow_jax.core import records
from avflow_jax.core.errors import BadInput
from avflow_jax.core.errors import FatalError
from data_prep import cache as cache_lib
from data_prep import clip as clip_lib
from data_prep import clip_pool
from data_prep import generations
from data_prep import output
from data_prep import readers
from data_prep import run_manifest
from data_prep import shards as shards_lib
from data_prep import source_files
from data_prep import stats as stats_lib
from data_prep.source_types import DatasetPlan

FACE_RIG_NAME = "face_rig.npz"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
      prog="python -m data_prep",
      description="Prepare AV-Flow training shards (see docs/data_prep.md).")
  p.add_argument("--format", required=True, choices=readers.FORMATS)
  p.add_argument("--input", required=True, help="source corpus directory")
  p.add_argument("--output", required=True, help="directory for shards + manifest.json")
  p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                 help="worker processes (1 = run in this process)")
  p.add_argument("--strict", action="store_true", help="any bad clip is a fatal error")
  p.add_argument("--val-dates", default="",
                 help="avflow50h: comma-separated YYYYMMDD dates whose segments are val "
                 "(default: the last two dates)")
  p.add_argument("--val-fraction", type=float, default=0.05,
                 help="generic/ljspeech without splits.json: last fraction of sorted clips "
                 "used for val")
  p.add_argument("--shards", type=int, default=0,
                 help="shards per split (default: about 256 MB each)")
  p.add_argument("--page-frames", type=int, default=shards_lib.DEFAULT_PAGE_FRAMES,
                 help="frames per record page: a training crop reads only the pages it "
                 "overlaps (0: one record per clip, manifest format 1)")
  p.add_argument("--asr-weights", default="",
                 help="wav2vec2-base-960h model.safetensors, for clips without token files")
  p.add_argument("--no-participant", action="store_true",
                 help="avflow50h: ignore the participant (SMIRK) stream")
  p.add_argument("--drop-cache", action="store_true",
                 help="delete <output>/.cache after a successful run")
  p.add_argument("--no-progress", action="store_true", help="no progress bars")
  args = p.parse_args(argv)
  args.val_dates = [d.strip() for d in args.val_dates.split(",") if d.strip()]
  if args.workers < 1:
    p.error("--workers must be >= 1")
  if args.page_frames < 0:
    p.error(f"--page-frames {args.page_frames}: must be >= 0")
  if args.shards < 0:
    p.error("--shards must be >= 0")
  return args


def process_clip(job: tuple) -> dict:
  """Worker: one clip -> cache entry.

  Returns:
    {"name", "ok", "frames"} on success; {"name", "ok": False, "reason", "kind"} for a bad
    clip (a skip); {"name", "ok": False, "output_error"} when the cache entry could not be
    written (disk full, permission, ...), which stops the whole run.
  """
  source_format, spec, options, asr_weights, cache_dir, key = job
  try:
    raw = readers.load_clip(source_format, spec, options)
    record, sums = clip_lib.build_record(raw, asr_weights, spec.files["audio"])
    data = records.encode_record(record)
    frames = int(record["mel"].shape[0])
  except BadInput as e:
    return {"name": spec.name, "ok": False, "reason": str(e), "kind": e.kind}
  except Exception as e:  # pylint: disable=broad-except  (a bug must not lose a long run)
    tb = traceback.format_exc(limit=3)
    return {"name": spec.name, "ok": False, "kind": "unexpected error",
            "reason": f"{spec.files.get('audio', spec.name)}: unexpected {type(e).__name__}: "
                      f"{e}\n{tb}"}
  # The output side: a failure here is the disk's, not the clip's, so it is not a skip.
  try:
    cache_lib.ClipCache(cache_dir).put(key, data, {"name": spec.name, "frames": frames,
                                                  "bytes": len(data), "sums": sums})
  except OSError as e:
    return {"name": spec.name, "ok": False,
            "output_error": output.message(e, os.path.join(cache_dir, key))}
  return {"name": spec.name, "ok": True, "frames": frames}


def _check_plan(dataset: DatasetPlan, skipped: list, args) -> None:
  """Fails before any work on --strict with skips, bad --asr-weights or missing tokens."""
  if args.strict and skipped:
    raise FatalError(f"--strict: {skipped[0]['reason']}")
  if args.asr_weights and not os.path.exists(args.asr_weights):
    raise FatalError(f"--asr-weights {args.asr_weights}: file does not exist")
  no_tokens = readers.needs_asr(dataset)
  if no_tokens and not args.asr_weights:
    raise FatalError(
        f"{len(no_tokens)} clip(s) (first: {no_tokens[0].name}, audio "
        f"{no_tokens[0].files['audio']}) have no ASR token file "
        f"({source_files.TOKEN_DIR}/<clip>.npy or <clip>.tokens.npy, depending on the layout); "
        "pass --asr-weights model.safetensors to compute them with the wav2vec2 port")


def _clip_keys(dataset: DatasetPlan, asr_weights: str) -> dict:
  keys = {}
  for spec in dataset.clips:
    asr = asr_weights if "tokens" not in spec.files else ""
    fp = cache_lib.fingerprint(dataset.source_format, spec.name, spec.files, spec.extra,
                               dataset.options, asr)
    keys[spec.name] = cache_lib.clip_key(spec.name, fp)
  return keys


def _gather(dataset: DatasetPlan, keys: dict, cache: cache_lib.ClipCache,
            skipped: list) -> tuple[dict, stats_lib.RunningStats]:
  """What is in the cache (this run's clips and earlier runs' alike), per split, + stats."""
  entries = {split: [] for split in generations.SPLITS}
  running = stats_lib.RunningStats()
  with output.writing(cache.directory, "read"):
    for spec in sorted(dataset.clips, key=lambda s: s.name):
      key = keys[spec.name]
      if not cache.has(key):
        continue
      meta = cache.meta(key)
      entries[spec.split].append((spec.name, key, int(meta["frames"]), int(meta["bytes"])))
      if spec.split == "train":
        running.add(meta["sums"])
  if not entries["train"]:
    raise FatalError("no clip of the train split was written (skipped: "
                     f"{len(skipped)}); nothing to compute the stats from")
  return entries, running


def _copy_face_rig(dataset: DatasetPlan, directory: str) -> Optional[str]:
  if not dataset.face_rig:
    return None
  try:
    with open(dataset.face_rig, "rb") as f:
      data = f.read()
  except OSError as e:
    raise FatalError(f"{output.describe(e, dataset.face_rig)}: unreadable face rig") from e
  path = os.path.join(directory, FACE_RIG_NAME)
  with output.writing(path):
    files.write_atomic(path, data, fsync=True)
  return FACE_RIG_NAME


def prepare(args: argparse.Namespace) -> dict:
  """Runs the whole preparation, holding the output directory's lock; returns the manifest.

  Raises:
    FatalError: unusable layout/arguments, or a bad clip under --strict.
    output.OutputError: --output is a file, or writing it failed (disk full, permission...).
    locks.LockedError: another live run holds --output.
  """
  output.check_directory(args.output)
  with contextlib.ExitStack() as stack:
    with output.writing(os.path.join(args.output, locks.LOCK_NAME)):
      stack.enter_context(locks.hold(args.output, "--output",
                                     lambda m: print(m, file=sys.stderr)))
    return _prepare_locked(args)


def _prepare_locked(args: argparse.Namespace) -> dict:
  t0 = time.time()
  dataset = readers.plan(args.format, args.input, args)
  skipped = [{"clip": c, "reason": r, "kind": k} for c, r, k in dataset.skipped]
  _check_plan(dataset, skipped, args)
  manifest_path = os.path.join(args.output, run_manifest.MANIFEST)
  old = generations.load_old_manifest(manifest_path)
  cache = generations.open_output(args.output, old)

  keys = _clip_keys(dataset, args.asr_weights)
  jobs = [(dataset.source_format, s, dataset.options, args.asr_weights, cache.directory,
           keys[s.name]) for s in dataset.clips if not cache.has(keys[s.name])]
  try:
    _, run_skipped = clip_pool.run_jobs(process_clip, jobs, args.workers, args.strict,
                                        not args.no_progress)
  finally:
    # Workers stopped mid-write (a full disk, Ctrl-C, --strict) are joined, so dead: their
    # temporaries go now rather than at the next run.
    try:
      files.remove_partials(cache.directory)
    except OSError:
      pass  # Best effort: the next run removes them too.
  skipped.extend(run_skipped)
  entries, running = _gather(dataset, keys, cache, skipped)

  new_files = []
  try:
    splits, prep, written = generations.write_shards(args, entries, cache, old or {},
                                                     new_files)
    face_decoder = _copy_face_rig(dataset, args.output)
    summary = run_manifest.build_summary(dataset, entries, splits, skipped, jobs, written, t0)
    manifest = run_manifest.build_manifest(dataset, splits, running, face_decoder, skipped,
                                           summary, prep, args.page_frames)
    with output.writing(manifest_path):
      files.fsync_directory(args.output)  # The shards' names are on disk before the commit.
      # The commit: readers switch from the old generation to the new one here.
      files.write_atomic(manifest_path, json.dumps(manifest, indent=1), fsync=True)
  except BaseException:
    generations.remove(new_files, "the unfinished generation's shard")
    raise
  try:
    files.fsync_directory(args.output)
  except OSError as e:  # Committed already: the rename is done, only its flush failed.
    print(f"warning: could not flush {output.describe(e, args.output)}", file=sys.stderr)
  generations.remove(shards_lib.stale_shards(args.output, prep["shard_keys"]),
                     "the replaced shard")
  if args.drop_cache:
    shutil.rmtree(cache.directory, ignore_errors=True)
  for line in run_manifest.summary_lines(summary, skipped):
    print(line)
  return manifest


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Command-line entry point; returns the exit status (docs/data_prep.md lists them)."""
  args = parse_args(argv)
  try:
    prepare(args)
  except FatalError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  except (output.OutputError, locks.LockedError) as e:
    print(f"error: {e}", file=sys.stderr)
    return output.EXIT_OUTPUT
  except KeyboardInterrupt:
    print("interrupted: finished clips are cached in "
          f"{os.path.join(args.output, '.cache')}; rerun the same command to resume",
          file=sys.stderr)
    return 130
  return 0
