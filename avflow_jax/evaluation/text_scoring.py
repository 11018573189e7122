r"""Scores the text-to-tokens model through the avatar: lip closures from text alone.

  python -m avflow_jax.evaluate_text --t2t-workdir /tmp/t2t --workdir /tmp/avflow
  python -m avflow_jax.evaluate_text --t2t-workdir /tmp/t2t --workdir /tmp/avflow \
      --split val --output eval_text/report.json --max-clips 4

Each clip of the split is re-enacted from text: every sentence (the records' `utterances`:
text and frame span) is replaced by the tokens the text-to-tokens run predicts from its text
alone, and the pauses between sentences keep their length but get a fixed "pause" token frame
(the mean token frame outside sentences in the training split). The avatar samples the whole
clip from these tokens, as it would in use, and its lip closures are compared with the recorded
ground truth. The predicted sentences have their own durations, so each is put on the
ground-truth time axis by dynamic time warping of the *tokens* (predicted vs recorded ASR
logits of that sentence, z-normalised, Euclidean cost; librosa.sequence.dtw): each
ground-truth frame shows the generated frame the warping path matches it to. The alignment
never looks at the face, so the score says whether the mouth closes on the right sounds, not
whether it can be warped onto the ground truth. For dyadic avatars the listener's recorded
features are warped the same way onto the generated time axis.

Metrics (F1 of lip-closure frames, pooled over frames like `avflow_jax.evaluate`):
  F1_lips                   whole clips, pauses included: the avatar metric of `evaluate`
  F1_lips_gt_tokens         the same frames with the avatar driven by the recorded tokens
  F1_lips_speech            sentence frames only (no resting mouth in pauses: harder)
  F1_lips_speech_gt_tokens  sentence frames only, recorded tokens: the avatar's own ceiling
  F1_lips_speech_unseen     sentence frames of sentences the text model never trained on
  token_agreement           DTW-aligned frames whose most likely character agrees
  duration_ratio            predicted / recorded sentence length, mean over sentences
  gt_closed_in_pauses       share of the recorded lip-closure frames outside sentences
A sentence counts as seen when it also occurs in the text model's training split (none do
when the run held the evaluated split out with `config.data.holdout_split`).

Output: OUTPUT (JSON), OUTPUT with suffix .md, and STEM_lips.png (lip-closure curves of the
first sentences); every file is written to a temporary name and renamed. Bad input stops with
one line on stderr and exit code 2.
"""

import argparse
import itertools
import json
import os
import sys
import time
from typing import Any, Optional

import numpy as np

from avflow_jax.core import cli
from avflow_jax.core import files
from avflow_jax.core.errors import AvatarError
from avflow_jax.core.errors import InputError
from avflow_jax.evaluation import common
from avflow_jax.evaluation import lip_scoring
from avflow_jax.evaluation import text_alignment
from avflow_jax.evaluation import text_clips
from avflow_jax.evaluation import text_report


def make_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(
      prog="python -m avflow_jax.evaluate_text",
      description="Scores a text-to-tokens run through an AV-Flow avatar (lip closures).")
  p.add_argument("--t2t-workdir", required=True, help="text-to-tokens training workdir")
  p.add_argument("--workdir", required=True, help="AV training workdir (the avatar)")
  common.add_scoring_arguments(p, "T2T_WORKDIR/eval_text/SPLIT-stepSTEP/report.json",
                                     plots="the lip-curve PNG")
  return p


def check_arguments(args) -> None:
  common.check_scoring_arguments(args, ("t2t_workdir", "workdir"))


def _load(args, log):
  """(the text-to-tokens run, the avatar); InputError when the avatar has no face rig."""
  from avflow_jax.inference import avatar as avatar_lib  # pylint: disable=g-import-not-at-top  (imports JAX)
  from avflow_jax.inference import text_tokens  # pylint: disable=g-import-not-at-top

  t2t = text_tokens.load_text_to_tokens(args.t2t_workdir, which=args.which)
  avatar = avatar_lib.Avatar.load(args.workdir, which=args.which, data_dir=args.data_dir)
  loaded = avatar.loaded
  if avatar.face_rig is None:
    raise InputError(f"--workdir {args.workdir}: its data has no face rig (manifest "
                     "face_decoder is null), so lip closures cannot be read from face codes")
  log(f"loaded {t2t.workdir} (step {t2t.step}) and {loaded.workdir} (step {loaded.step})")
  return t2t, avatar


def _sample_clip(args, t2t, avatar, i: int, name: str, record: dict, utts: list, silence,
                 timings: dict) -> tuple[dict, np.ndarray, np.ndarray]:
  """Clip i driven from text and from its recorded tokens.

  Returns:
    (`text_alignment.text_driven_clip` of the clip, face codes sampled from its text-driven
    tokens, face codes sampled from its recorded tokens); adds to the "text_to_tokens" and
    "sample" `timings`.
  """
  from avflow_jax.inference import text_tokens  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()

  def predict(text, k):
    try:
      return text_tokens.text_to_tokens(text, t2t, seed=args.seed + 100_000 * i + k)
    except AvatarError as e:
      raise InputError(f"clip {name!r} sentence {k} ({text!r}): {e}") from e

  try:
    driven = text_alignment.text_driven_clip(record, utts, predict, silence,
                                             (t2t.token_mean, t2t.token_std))
  except ValueError as e:
    raise InputError(f"clip {name!r}: {e}") from e
  t1 = time.perf_counter()
  loaded = avatar.loaded
  part = (np.asarray(record["participant"], np.float32) if loaded.uses_participant else None)
  gt_tokens = np.asarray(record["tokens"], np.float32)
  from_text = avatar.sample_motion(
      driven["tokens"], seed=args.seed + i, num_steps=args.steps,
      participant=None if part is None else part[driven["gt_of_gen"]])["face"][0]
  from_gt = avatar.sample_motion(gt_tokens, seed=args.seed + i, num_steps=args.steps,
                                 participant=part)["face"][0]
  timings["text_to_tokens"] += t1 - t0
  timings["sample"] += time.perf_counter() - t1
  return driven, from_text, from_gt


def evaluate_text(args, log=print) -> dict[str, Any]:
  """Runs the evaluation for parsed `args`; returns the report (also written to disk).

  Raises:
    InputError / inference.AvatarError: bad input (the CLI prints one line, exit code 2).
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  check_arguments(args)
  start = time.perf_counter()
  t2t, avatar = _load(args, log)
  loaded = avatar.loaded
  train_split = loaded.config.data.get("train_split", "train")
  silence, seen = text_clips.training_split_summary(loaded, t2t.config, train_split)
  add_blank = bool(t2t.config.data.get("add_blank", True))

  output = args.output or os.path.join(t2t.workdir, "eval_text",
                                       f"{args.split}-step{t2t.step}", "report.json")
  output, out_dir, stem = common.report_location(output)

  scores = lip_scoring.LipScores(avatar.face_rig, seen)
  timings = {"text_to_tokens": 0.0, "sample": 0.0}
  bar = tqdm(itertools.islice(text_clips.evaluated_clips(loaded, args.split, add_blank, log),
                              args.max_clips), unit="clip",
             desc=f"evaluate_text {args.split}", file=sys.stderr, dynamic_ncols=True)
  for i, (name, record, utts) in enumerate(bar):
    driven, from_text, from_gt = _sample_clip(args, t2t, avatar, i, name, record, utts, silence,
                                              timings)
    row = scores.add(name, record, utts, driven, from_text, from_gt)
    bar.set_postfix(F1=f"{row['F1_lips']:.3f}")
  bar.close()
  if not scores.utterances:
    raise InputError(f"--split {args.split!r}: no clip has a speakable utterance (record field "
                     "'utterances' or 'text')")

  values = scores.summary()
  timings["total"] = time.perf_counter() - start
  report = text_report.build_report(args, t2t, loaded, scores, values, timings)
  if not args.no_plots and scores.plotted:
    text_report.plot_lips(os.path.join(out_dir, stem + "_lips.png"), scores.plotted)
  files.write_atomic(os.path.join(out_dir, stem + ".md"), text_report.render_markdown(report))
  files.write_atomic(output, json.dumps(report, indent=2, allow_nan=False) + "\n")
  report["output"] = output
  log("  ".join(f"{k} {common.fmt(v)}" for k, v in values.items()))
  log(f"wrote {output} in {timings['total']:.1f} s")
  return report


def main(argv: Optional[list[str]] = None) -> int:
  return cli.run(argv, make_parser, evaluate_text, (InputError,))


if __name__ == "__main__":
  sys.exit(main())
