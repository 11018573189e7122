r"""Evaluates a trained avatar on held-out clips with the paper's metrics.

  python -m avflow_jax.evaluate --workdir /tmp/avflow                  # val split, 8 steps
  python -m avflow_jax.evaluate --workdir /tmp/avflow --split val --output eval/report.json \
      --max-clips 50 --vocoder-weights bigvgan.safetensors
  python -m avflow_jax.evaluate --workdir /tmp/avflow --oracle         # ground truth as "sample"

Each clip of the split (its first --max-seconds seconds) is sampled from the latest checkpoint,
conditioned on the clip's own ASR tokens (and participant features for dyadic runs); the mel is
vocoded (BigVGAN with --vocoder-weights, else Griffin-Lim) and scored against the held-out
ground truth with `avflow_jax.metrics` (see docs/evaluation.md):

  F1_lips, F1_smiles  lip-closure / smile events of the face-rig channels (demo face rig only)
  FDe                 Fréchet distance of generated vs ground-truth face codes (all frames)
  Div_h, Div_e        diversity of generated head pose / face codes
  BC_h, BC_e          beat consistency of generated speech vs generated head / face motion
  MCD                 mel-cepstral distortion of generated vs ground-truth speech
  WER                 word error rate of PocketSphinx on the generated speech of each
                      utterance in the evaluated frames (optional extra `avflow_jax[wer]`)
  Jitter_face/_head   mean |second difference| of the generated rig channels (codes without
                      a rig) / head pose at 30 fps, as a ratio to the ground truth's

The same metrics on the ground truth itself (Div, BC, WER of the recordings) form a reference
row, and the ground truth's mel through the same vocoder another (MCD, WER: the floor a
perfect mel would reach). With --oracle the
ground-truth mel, codes and head pose replace the samples: an upper bound, and a check of the
pipeline (F1 = 1, FDe = 0; MCD is then the vocoder's own distortion).

Output (every file written to a temporary name, then renamed): OUTPUT (JSON: metrics, reference,
per-clip values, config summary, checkpoint step), OUTPUT with suffix .md (a markdown summary)
and one PNG per clip next to it (STEM_CLIP.png: mel, face channels or codes and head pose,
generated solid vs ground truth dashed). A missing workdir, checkpoint or split stops with one
line on stderr and exit code 2.
"""

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Optional

import numpy as np

from avflow_jax.core import cli
from avflow_jax.core import constants as C
from avflow_jax.core import files
from avflow_jax.core.errors import InputError
from avflow_jax.data import clips
from avflow_jax.data import utterances as utterances_lib
from avflow_jax.evaluation import av_metrics
from avflow_jax.evaluation import av_report
from avflow_jax.evaluation import common
from avflow_jax.evaluation import speech_recognition

DEFAULT_MAX_SECONDS = 20.0
METRIC_KEYS = av_metrics.METRIC_KEYS
REFERENCE_KEYS = av_metrics.REFERENCE_KEYS


def default_report_name(args, step: int, run_temperature: float = 1.0) -> str:
  """The report folder's name: the split and step, then every sampler setting not at its
  default (the temperature's is the run's `sample.temperature`), so reports of one checkpoint
  at several temperatures or seeds do not overwrite each other."""
  defaults = make_parser()
  defaults.set_defaults(temperature=run_temperature)
  name = f"{args.split}-step{step}" + ("-oracle" if args.oracle else "")
  for flag, tag in (("temperature", "T"), ("steps", "euler"), ("seed", "seed")):
    value = getattr(args, flag)
    if value is not None and value != defaults.get_default(flag):
      name += f"-{tag}{value:g}" if isinstance(value, float) else f"-{tag}{value}"
  return name


def make_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(prog="python -m avflow_jax.evaluate",
                      description="Scores a trained AV-Flow avatar on held-out clips.")
  p.add_argument("--workdir", required=True, help="AV training workdir (config.json, checkpoints)")
  common.add_scoring_arguments(
      p, "WORKDIR/eval/SPLIT-stepSTEP[-oracle][-TTEMP][-eulerSTEPS][-seedSEED]/report.json, "
      "a part only where it is not the default", plots="the per-clip PNGs")
  p.add_argument("--checkpoint", type=int, metavar="STEP",
                 help="score this checkpoint step instead of the latest (a learning curve)")
  p.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                 help="evaluate the first S seconds of each clip (0: whole clips)")
  p.add_argument("--vocoder-weights", help="BigVGAN safetensors (default: Griffin-Lim)")
  p.add_argument("--oracle", action="store_true",
                 help="score the ground-truth mel/codes/head instead of samples (upper bound)")
  p.add_argument("--temperature", type=float,
                 help="scale of the sampler's initial noise (default: the run's "
                      "sample.temperature; 1 = the trained distribution)")
  p.add_argument("--no-wer", action="store_true",
                 help="skip the speech recogniser (WER; its rows take most of the time)")
  p.add_argument("--no-reference-wer", action="store_true",
                 help="transcribe only the generated speech, not the recordings and the "
                      "vocoded ground truth (their WER rows stay empty)")
  return p


def check_arguments(args) -> None:
  """Checks that need no model."""
  common.check_scoring_arguments(args)
  if args.temperature is not None and (not math.isfinite(args.temperature)
                                       or args.temperature < 0):
    raise InputError(f"--temperature {args.temperature}: must be a finite number >= 0")
  if not math.isfinite(args.max_seconds) or args.max_seconds < 0:
    raise InputError(f"--max-seconds {args.max_seconds}: must be a finite number >= 0")
  if args.vocoder_weights and not os.path.isfile(args.vocoder_weights):
    raise InputError(f"--vocoder-weights {args.vocoder_weights}: file missing")


def crop_record(record: dict, max_frames: Optional[int], participant: bool) -> dict:
  """The evaluated part of a record: the first `max_frames` frames of every stream (float32).

  Returns:
    {"name", "tokens", "mel", "face", "face_mask", "head", "audio" (float in [-1, 1] or None),
     "participant" (or None), "utterances" ((text, start, end) spans ending inside)}.
  """
  name = record["name"]
  for key in ("tokens", "mel", "face", "head"):
    if key not in record:
      raise InputError(f"clip {name!r}: record has no {key!r} field")
  t = int(record["mel"].shape[0])
  if max_frames:
    t = min(t, int(max_frames))
  out = {"name": name}
  for key in ("tokens", "mel", "face", "head"):
    x = np.asarray(record[key], np.float32)
    if x.shape[0] < t:
      raise InputError(f"clip {name!r}: {key} has {x.shape[0]} frames, mel has {t}")
    out[key] = x[:t]
  mask = record.get("face_mask")
  out["face_mask"] = (np.ones((t,), bool) if mask is None
                      else np.asarray(mask)[:t] > 0.5)
  audio = record.get("audio")
  out["audio"] = (None if audio is None or np.asarray(audio).size < t * C.HOP_LENGTH
                  else np.asarray(audio)[:t * C.HOP_LENGTH].astype(np.float32) / 32768.0)
  out["participant"] = None
  if participant:
    if "participant" not in record:
      raise InputError(f"clip {name!r}: the run is dyadic (data.participant) but the record "
                       "has no 'participant' field")
    out["participant"] = np.asarray(record["participant"], np.float32)[:t]
  try:
    spans = utterances_lib.clip_utterances(record, f"clip {name!r}")
  except ValueError as e:
    raise InputError(str(e)) from e
  out["utterances"] = tuple(u for u in spans if u[2] <= t)
  return out


# ---- The run -------------------------------------------------------------------------------------

def _recognizer(args, log):
  """(the speech recogniser or None, why there is none)."""
  if args.no_wer:
    return None, "skipped (--no-wer)"
  reason = speech_recognition.unavailable_reason()
  if reason:
    log(f"WER: {reason}")
    return None, reason
  return speech_recognition.Recognizer(), ""


def _entries_to_score(avatar, args) -> tuple[list, list, Optional[int]]:
  """(shards, entries of the split's clips to score, frames scored of each or None: whole).

  Unless --oracle, a clip too long to sample is refused before any clip is sampled.
  """
  loaded = avatar.loaded
  shards, entries = clips.split_entries(loaded.data_dir, loaded.manifest, args.split)
  if args.max_clips:
    entries = entries[:args.max_clips]
  max_frames = int(args.max_seconds * C.FRAME_RATE) if args.max_seconds else None
  if not args.oracle:
    for e in entries:
      if "frames" in e:
        avatar.check_length(min(int(e["frames"]), max_frames or int(e["frames"])),
                            what=f"clip {e['name']!r}",
                            hint=f"score its first S seconds with --max-seconds S <= "
                                 f"{avatar.max_seconds:g}")
  return shards, entries, max_frames


def _generate(avatar, rec: dict, i: int, args,
              vocode_gt: bool) -> tuple[av_metrics.ClipStreams, float, float]:
  """Clip i's generated streams (the ground truth's with --oracle) beside its ground truth.

  Returns:
    (the clip's streams, seconds sampling, seconds vocoding); with `vocode_gt` the ground
    truth's mel is vocoded too (the WER floor: a perfect mel through this vocoder).
  """
  t0 = time.perf_counter()
  if args.oracle:
    gen = {"mel": rec["mel"], "face": rec["face"], "head": rec["head"]}
  else:
    out = avatar.sample_motion(rec["tokens"], seed=args.seed + i, num_steps=args.steps,
                               participant=rec["participant"], temperature=args.temperature)
    gen = {k: out[k][0] for k in ("mel", "face", "head")}
  t1 = time.perf_counter()
  gen_audio = avatar.vocode(gen["mel"])
  vocoded_gt = None
  if vocode_gt:
    vocoded_gt = gen_audio if args.oracle else avatar.vocode(rec["mel"])
  t2 = time.perf_counter()
  clip = av_metrics.ClipStreams(
      name=rec["name"], gt_mel=rec["mel"], gt_face=rec["face"], gt_head=rec["head"],
      face_mask=rec["face_mask"], gt_audio=rec["audio"], gen_mel=gen["mel"],
      gen_face=gen["face"], gen_head=gen["head"], gen_audio=gen_audio,
      utterances=rec["utterances"], vocoded_gt_audio=vocoded_gt)
  return clip, t1 - t0, t2 - t1


def evaluate(args, log=print) -> dict[str, Any]:
  """Runs the evaluation for parsed `args`; returns the report dict (also written to disk).

  Raises:
    InputError / inference.AvatarError: bad input (the CLI prints one line, exit code 2).
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  check_arguments(args)
  start = time.perf_counter()
  timings = {"load": 0.0, "sample": 0.0, "vocoder": 0.0, "metrics": 0.0, "plot": 0.0}
  from avflow_jax.inference import avatar as avatar_lib  # pylint: disable=g-import-not-at-top  (imports JAX)

  avatar = avatar_lib.Avatar.load(args.workdir, vocoder_weights=args.vocoder_weights,
                                  which=args.which, data_dir=args.data_dir,
                                  step=args.checkpoint)
  loaded = avatar.loaded
  timings["load"] = time.perf_counter() - start
  log(f"loaded {loaded.workdir} (step {loaded.step}, {args.which} weights) in "
      f"{timings['load']:.1f} s")
  shards, entries, max_frames = _entries_to_score(avatar, args)
  output = args.output or os.path.join(
      loaded.workdir, "eval", default_report_name(args, loaded.step, loaded.sample_temperature),
      "report.json")
  if args.temperature is None:
    args.temperature = loaded.sample_temperature
  output, out_dir, stem = common.report_location(output)

  rig = loaded.face_rig
  recognizer, wer_missing = _recognizer(args, log)
  reference_wer = not getattr(args, "no_reference_wer", False)
  acc = av_metrics.MetricAccumulator(rig, recognizer, wer_missing, reference_wer)
  records = clips.iter_split_records(shards, entries, clips.page_frames(loaded.manifest))
  bar = tqdm(records, total=len(entries), unit="clip",
             desc=f"evaluate {args.split}", file=sys.stderr, dynamic_ncols=True)
  for i, (_, record) in enumerate(bar):
    rec = crop_record(record, max_frames, loaded.uses_participant)
    clip, sample_s, vocoder_s = _generate(
        avatar, rec, i, args, vocode_gt=recognizer is not None and reference_wer)
    t2 = time.perf_counter()
    row = acc.add(clip)
    t3 = time.perf_counter()
    if not args.no_plots:
      row["plot"] = common.plot_name(stem, clip.name)
      av_report.plot_clip(os.path.join(out_dir, row["plot"]), clip, rig)
    t4 = time.perf_counter()
    for k, dt in (("sample", sample_s), ("vocoder", vocoder_s),
                  ("metrics", t3 - t2), ("plot", t4 - t3)):
      timings[k] += dt
    bar.set_postfix(MCD=common.fmt(row.get("MCD")), WER=common.fmt(row.get("WER")),
                    jitter=common.fmt(row.get("Jitter_face")))
  bar.close()

  t0 = time.perf_counter()
  summary = acc.summary()
  timings["metrics"] += time.perf_counter() - t0
  timings["total"] = time.perf_counter() - start
  report = av_report.build_report(args, avatar, acc.per_clip, summary, recognizer, timings)
  files.write_atomic(os.path.join(out_dir, stem + ".md"), av_report.render_markdown(report))
  # The JSON last: its presence means the evaluation finished.
  files.write_atomic(output, json.dumps(report, indent=2, allow_nan=False) + "\n")
  report["output"] = output
  log("  ".join(f"{k} {common.fmt(report['metrics'][k])}" for k in METRIC_KEYS))
  log(f"wrote {output} (+ .md{', plots' if not args.no_plots else ''}) in "
      f"{timings['total']:.1f} s")
  return report


def main(argv: Optional[list[str]] = None) -> int:
  """CLI entry point; returns the exit code (2 for bad input, with one line on stderr)."""
  return cli.run(argv, make_parser, evaluate, (InputError,))


if __name__ == "__main__":
  sys.exit(main())
