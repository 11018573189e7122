"""`python -m data_prep`: raw corpus -> ArrayRecord shards + manifest.json.

Stages, all under the output directory's lock: plan (list clips, splits, dataset options)
-> process clips in a process pool into the per-clip cache (resumable) -> stats over the
train split -> shards of a new generation (atomic, new names) -> manifest.json (atomic, the
commit) -> delete the shards no manifest names -> summary. Output-side OS errors stop the
run (data_prep/output.py); input-side ones skip the clip.
"""

import argparse
import collections
import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import traceback
from typing import Optional, Sequence

from tqdm import tqdm

from avflow_jax.core import constants as C
from avflow_jax.core import files
from avflow_jax.core import locks
from avflow_jax.core import records
from avflow_jax.core.errors import BadInput
from avflow_jax.core.errors import FatalError
import data_prep
from data_prep import cache as cache_lib
from data_prep import clip as clip_lib
from data_prep import output
from data_prep import readers
from data_prep import shards as shards_lib
from data_prep import stats as stats_lib

MANIFEST = "manifest.json"
FACE_RIG_NAME = "face_rig.npz"
SPLITS = ("train", "val")


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


def _ignore_sigint() -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run_jobs(jobs: list, workers: int, strict: bool, progress: bool) -> tuple[list, list]:
  """Runs `process_clip` over jobs; returns (done names, skipped dicts)."""
  done, skipped = [], []
  bar = tqdm(total=len(jobs), unit="clip", desc="clips", disable=not progress,
             dynamic_ncols=True)
  audio_s = 0.0
  t0 = time.time()

  def handle(result):
    nonlocal audio_s
    bar.update(1)
    if "output_error" in result:
      raise output.OutputError(result["output_error"])
    if result["ok"]:
      done.append(result["name"])
      audio_s += result["frames"] / C.FRAME_RATE
      bar.set_postfix_str(f"{audio_s / max(time.time() - t0, 1e-9):.0f}x realtime")
      return
    msg = f"skipped {result['name']}: {result['reason']}"
    if strict:
      raise FatalError(f"--strict: {msg}")
    tqdm.write(msg, file=sys.stderr)
    skipped.append({"clip": result["name"], "reason": result["reason"], "kind": result["kind"]})

  try:
    if workers == 1 or len(jobs) <= 1:
      for job in jobs:
        handle(process_clip(job))
    else:
      # spawn: workers must not inherit a forked JAX runtime. Workers ignore SIGINT so a
      # Ctrl-C reaches only this process, which then terminates them (their unfinished
      # cache writes are temporaries, removed by the next run).
      ctx = multiprocessing.get_context("spawn")
      pool = ctx.Pool(min(workers, len(jobs)), initializer=_ignore_sigint)
      try:
        for result in pool.imap_unordered(process_clip, jobs):
          handle(result)
      except BaseException:
        pool.terminate()
        pool.join()
        raise
      pool.close()
      pool.join()
  finally:
    bar.close()
  return done, skipped


def _load_old_manifest(path: str) -> Optional[dict]:
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


def _remove(paths: list, why: str) -> None:
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


def _summary_lines(summary: dict, skipped: list) -> list:
  w, h = summary["clips_written"], summary["hours"]
  lines = [f"clips written: {w['total']} (train {w['train']}, val {w['val']}); "
           f"hours: {h['total']:.3f} (train {h['train']:.3f}, val {h['val']:.3f})",
           f"processed now: {summary['processed_this_run']}, reused from cache: "
           f"{summary['reused_from_cache']}; shards written: {summary['shards_written']}, "
           f"unchanged: {summary['shards_reused']}; {summary['wall_seconds']:.1f} s"]
  lines.append(f"clips skipped: {summary['clips_skipped']}" + (
      " (" + ", ".join(f"{k}: {n}" for k, n in summary["skipped_by_reason"].items()) + ")"
      if skipped else ""))
  for s in skipped[:20]:
    lines.append(f"  {s['clip']}: {s['reason'].splitlines()[0]}")
  if len(skipped) > 20:
    lines.append(f"  ... {len(skipped) - 20} more in {MANIFEST} 'skipped'")
  lines.extend(f"note: {n}" for n in summary["notes"])
  return lines


def _check_plan(dataset: readers.DatasetPlan, skipped: list, args) -> None:
  """Fails before any work on --strict with skips, bad --asr-weights or missing tokens."""
  if args.strict and skipped:
    raise FatalError(f"--strict: {skipped[0]['reason']}")
  if args.asr_weights and not os.path.exists(args.asr_weights):
    raise FatalError(f"--asr-weights {args.asr_weights}: file does not exist")
  no_tokens = readers.needs_asr(dataset)
  if no_tokens and not args.asr_weights:
    raise FatalError(
        f"{len(no_tokens)} clip(s) (first: {no_tokens[0].name}, audio "
        f"{no_tokens[0].files['audio']}) have no ASR token file ({readers.TOKEN_DIR}/<clip>.npy "
        "or <clip>.tokens.npy, depending on the layout); pass --asr-weights "
        "model.safetensors to compute them with the wav2vec2 port")


def _clip_keys(dataset: readers.DatasetPlan, asr_weights: str) -> dict:
  keys = {}
  for spec in dataset.clips:
    asr = asr_weights if "tokens" not in spec.files else ""
    fp = cache_lib.fingerprint(dataset.source_format, spec.name, spec.files, spec.extra,
                               dataset.options, asr)
    keys[spec.name] = cache_lib.clip_key(spec.name, fp)
  return keys


def _gather(dataset: readers.DatasetPlan, keys: dict, cache: cache_lib.ClipCache,
            skipped: list) -> tuple[dict, stats_lib.RunningStats]:
  """What is in the cache (this run's clips and earlier runs' alike), per split, + stats."""
  entries = {split: [] for split in SPLITS}
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


def _write_shards(args, entries: dict, cache: cache_lib.ClipCache, old: dict,
                  new_files: list) -> tuple[dict, dict, int]:
  """Writes this generation's shards; returns (splits, shard keys, shards written).

  A shard whose clips (and position) are those of one of the current manifest's shards is
  not rewritten: the new manifest names the existing file. Every file written is appended
  to `new_files` as soon as it exists, so a failure later can delete the lot.
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


def _copy_face_rig(dataset: readers.DatasetPlan, directory: str) -> Optional[str]:
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


def _manifest(dataset: readers.DatasetPlan, splits: dict, running, face_decoder, skipped: list,
              summary: dict, prep: dict, page_frames: int) -> dict:
  return {
      **shards_lib.format_fields(page_frames),
      "source_format": dataset.source_format,
      "frame_rate": C.FRAME_RATE, "sample_rate": C.SAMPLE_RATE, "hop_length": C.HOP_LENGTH,
      "dims": {"mel": C.N_MELS, "tokens": C.TOKEN_DIM,
               "face": C.FACE_DIM if dataset.face else 0, "head": dataset.head_dim,
               "participant": C.PARTICIPANT_DIM if dataset.participant else 0},
      "head_kind": dataset.head_kind,
      "splits": splits,
      "stats": running.finalize(),
      "face_decoder": face_decoder,
      "skipped": [{"clip": s["clip"], "reason": s["reason"]} for s in skipped],
      "summary": summary,
      **dataset.extra_manifest,
      "prep": {"version": data_prep.PREP_VERSION, "audio_int16_scale": 32768.0, **prep},
  }


def _summary(dataset, entries: dict, splits: dict, skipped: list, jobs: list, written: int,
             t0: float) -> dict:
  kinds = collections.Counter(s["kind"] for s in skipped)
  total_shards = sum(len(v["shards"]) for v in splits.values())
  return {
      "clips_written": {"train": len(entries["train"]), "val": len(entries["val"]),
                        "total": len(entries["train"]) + len(entries["val"])},
      "hours": {"train": splits["train"]["hours"], "val": splits["val"]["hours"],
                "total": splits["train"]["hours"] + splits["val"]["hours"]},
      "clips_skipped": len(skipped),
      "skipped_by_reason": dict(sorted(kinds.items())),
      "processed_this_run": len(jobs),
      "reused_from_cache": len(dataset.clips) - len(jobs),
      "shards_written": written, "shards_reused": total_shards - written,
      "wall_seconds": time.time() - t0,
      "notes": list(dataset.notes),
  }


def _open_output(directory: str, old: Optional[dict]) -> cache_lib.ClipCache:
  """The cache, with what killed runs left behind removed (the lock is held)."""
  with output.writing(directory):
    cache = cache_lib.ClipCache(os.path.join(directory, ".cache"))
    files.remove_partials(cache.directory)
    files.remove_partials(directory)
  if old is not None:
    # Shards of a generation that never got its manifest (a run killed mid-rewrite): no
    # reader can be using them. With an unreadable manifest nothing is deleted here.
    _remove(shards_lib.stale_shards(directory, _named_shards(old)),
            "the unreferenced shard")
  return cache


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
  manifest_path = os.path.join(args.output, MANIFEST)
  old = _load_old_manifest(manifest_path)
  cache = _open_output(args.output, old)

  keys = _clip_keys(dataset, args.asr_weights)
  jobs = [(dataset.source_format, s, dataset.options, args.asr_weights, cache.directory,
           keys[s.name]) for s in dataset.clips if not cache.has(keys[s.name])]
  try:
    _, run_skipped = _run_jobs(jobs, args.workers, args.strict, not args.no_progress)
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
    splits, prep, written = _write_shards(args, entries, cache, old or {}, new_files)
    face_decoder = _copy_face_rig(dataset, args.output)
    summary = _summary(dataset, entries, splits, skipped, jobs, written, t0)
    manifest = _manifest(dataset, splits, running, face_decoder, skipped, summary, prep,
                         args.page_frames)
    with output.writing(manifest_path):
      files.fsync_directory(args.output)  # The shards' names are on disk before the commit.
      # The commit: readers switch from the old generation to the new one here.
      files.write_atomic(manifest_path, json.dumps(manifest, indent=1), fsync=True)
  except BaseException:
    _remove(new_files, "the unfinished generation's shard")
    raise
  try:
    files.fsync_directory(args.output)
  except OSError as e:  # Committed already: the rename is done, only its flush failed.
    print(f"warning: could not flush {output.describe(e, args.output)}", file=sys.stderr)
  _remove(shards_lib.stale_shards(args.output, prep["shard_keys"]), "the replaced shard")
  if args.drop_cache:
    shutil.rmtree(cache.directory, ignore_errors=True)
  for line in _summary_lines(summary, skipped):
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
