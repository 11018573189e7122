r"""Scores the text-to-tokens model through the avatar: lip closures from text alone.

  python -m avflow_jax.evaluate_text --t2t-workdir /tmp/t2t --workdir /tmp/avflow
  python -m avflow_jax.evaluate_text --t2t-workdir /tmp/t2t --workdir /tmp/avflow \
      --split val --output eval_text/report.json --max-utterances 20

For every utterance of the split (its `utterances` text and frame span in the records), the
text-to-tokens run predicts tokens from the text alone, the avatar samples face motion from
them, and the generated lip closures are compared with the recorded ground truth of the same
utterance. The predicted speech has its own durations, so the two are put on one time axis
first by dynamic time warping of the *tokens* (predicted vs ground-truth ASR logits,
z-normalised, Euclidean cost; librosa.sequence.dtw): each ground-truth frame takes the
generated frame the warping path matches it to. The alignment never looks at the face, so
the score says whether the mouth closes on the right sounds, not whether it can be warped onto
the ground truth. For dyadic avatars the listener's recorded features are warped the same way
onto the generated time axis.

Rows of the report (pooled over all frames, like `avflow_jax.evaluate`):
  F1_lips             text -> tokens -> avatar, DTW-aligned (the figure of merit)
  F1_lips_linear      the same samples stretched linearly to the ground-truth length
  F1_lips_gt_tokens   the avatar driven by the ground-truth tokens (no text model): the ceiling
  token_agreement     share of DTW-aligned frames whose most likely character agrees
  duration_ratio      predicted / ground-truth frames, mean over utterances
Utterances whose sentence also occurs in the text model's training split are counted as
"seen"; F1_lips_unseen pools the others (all of them when the run held the split out with
`config.data.holdout_split`).

Output: OUTPUT (JSON), OUTPUT with suffix .md, and STEM_lips.png (lip-closure curves of the first
utterances); every file is written to a temporary name and renamed. Bad input stops with one
line on stderr and exit code 2.
"""

import argparse
import json
import os
import sys
import time
from typing import Any, Optional

import numpy as np

from avflow_jax import cli
from avflow_jax import constants as C
from avflow_jax import evaluate as evaluate_lib
from avflow_jax import face_rig as face_rig_lib
from avflow_jax import metrics

InputError = evaluate_lib.InputError
REPORT_VERSION = 1
PLOTTED_UTTERANCES = 4


def make_parser() -> argparse.ArgumentParser:
  p = evaluate_lib._ArgumentParser(  # pylint: disable=protected-access
      prog="python -m avflow_jax.evaluate_text",
      description="Scores a text-to-tokens run through an AV-Flow avatar (lip closures).")
  p.add_argument("--t2t-workdir", required=True, help="text-to-tokens training workdir")
  p.add_argument("--workdir", required=True, help="AV training workdir (the avatar)")
  p.add_argument("--split", default="val", help="manifest split to evaluate (default: val)")
  p.add_argument("--output", help="report JSON path (default: T2T_WORKDIR/eval_text/"
                                  "SPLIT-stepSTEP/report.json)")
  p.add_argument("--steps", type=int, default=8, help="Euler steps of the avatar's sampler")
  p.add_argument("--seed", type=int, default=0, help="noise seed (utterance i uses seed + i)")
  p.add_argument("--max-utterances", type=int, help="evaluate only the first N utterances")
  p.add_argument("--which", choices=("ema", "params"), default="ema", help="weights to use")
  p.add_argument("--data-dir", help="shard directory, if it moved since training")
  p.add_argument("--no-plots", action="store_true", help="skip the lip-curve PNG")
  p.add_argument("--verbose", action="store_true", help="show library logs on stderr")
  return p


def check_arguments(args) -> None:
  for flag in ("t2t_workdir", "workdir"):
    path = getattr(args, flag)
    if not os.path.isdir(path):
      raise InputError(f"--{flag.replace('_', '-')} {path}: no such directory")
  if args.steps < 1:
    raise InputError(f"--steps {args.steps}: must be >= 1")
  if args.max_utterances is not None and args.max_utterances < 1:
    raise InputError(f"--max-utterances {args.max_utterances}: must be >= 1")
  if args.output is not None and not args.output.endswith(".json"):
    raise InputError(f"--output {args.output}: must be a .json path (the report)")


# ---- Alignment -----------------------------------------------------------------------------------

def dtw_align(pred_tokens: np.ndarray, gt_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Aligns predicted to ground-truth token frames by DTW.

  Args:
    pred_tokens: (N, 29) raw logits predicted from text.
    gt_tokens: (M, 29) raw logits of the recording.

  Returns:
    (pred_of_gt (M,), gt_of_pred (N,)) int arrays: for each frame of one sequence, the frame of
    the other that the warping path matches it to (the middle one when it matches several).
  """
  import librosa  # pylint: disable=g-import-not-at-top
  pred = np.asarray(pred_tokens, np.float64)
  gt = np.asarray(gt_tokens, np.float64)
  for name, x in (("pred_tokens", pred), ("gt_tokens", gt)):
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] != C.TOKEN_DIM:
      raise ValueError(f"dtw_align: {name} must be (T, {C.TOKEN_DIM}), got {x.shape}")
  mean, std = np.asarray(C.TOKEN_MEAN), np.asarray(C.TOKEN_STD)
  _, path = librosa.sequence.dtw(X=((pred - mean) / std).T, Y=((gt - mean) / std).T,
                                 metric="euclidean")
  path = path[::-1]  # librosa returns it end to start.
  return _middle_match(path[:, 1], path[:, 0], gt.shape[0]), \
      _middle_match(path[:, 0], path[:, 1], pred.shape[0])


def _middle_match(keys: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
  """For k in [0, n): the middle of the values paired with key k on a monotone path."""
  out = np.zeros((n,), np.int64)
  for k in range(n):
    v = values[keys == k]
    out[k] = v[len(v) // 2]  # a DTW path visits every index of both sequences.
  return out


def linear_index(n_from: int, n_to: int) -> np.ndarray:
  """For each of `n_to` frames, the frame of an `n_from`-frame sequence at the same fraction."""
  return np.minimum((np.arange(n_to) * n_from) // max(n_to, 1), n_from - 1)


# ---- The run -------------------------------------------------------------------------------------

def _utterances(loaded, split: str):
  """Yields (clip name, text, start, end, record) for each utterance of the split."""
  from avflow_jax import t2t_data  # pylint: disable=g-import-not-at-top
  shards, entries = evaluate_lib.split_entries(loaded.data_dir, loaded.manifest, split)
  for e, record in evaluate_lib.iter_records(shards, entries):
    where = f"{loaded.data_dir} split {split!r} clip {e['name']!r}"
    try:
      utts = t2t_data.clip_utterances(record, where)
    except ValueError as err:
      raise InputError(str(err)) from err
    for text, start, end in utts:
      yield e["name"], text, start, end, record


def _seen_texts(t2t_config, loaded, split: str) -> set[str]:
  """Sentences the text model trained on (its train split minus the held-out split's)."""
  from avflow_jax import t2t_data  # pylint: disable=g-import-not-at-top
  train_split = t2t_config.data.get("train_split", "train")
  if train_split == split:
    return {"*"}  # evaluating on the training split: everything is seen.
  if t2t_config.data.get("holdout_split", "") == split:
    return set()
  seen = set()
  for _, text, _, _, _ in _utterances(loaded, train_split):
    seen.add(t2t_data.text_key(text))
  return seen


def _slice(record: dict, key: str, start: int, end: int) -> np.ndarray:
  if key not in record:
    raise InputError(f"clip {record.get('name')!r}: record has no {key!r} field")
  return np.asarray(record[key], np.float32)[start:end]


def _plot_lips(path: str, rows: list[dict]) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.2 * len(rows)), squeeze=False)
  for ax, r in zip(axes[:, 0], rows):
    t = np.arange(len(r["gt"])) / C.FRAME_RATE
    ax.plot(t, r["gt"], "k--", label="ground truth")
    ax.plot(t, r["text"], "C0", label="from text (DTW-aligned)")
    ax.plot(t, r["gt_tokens"], "C1", alpha=0.6, label="from ground-truth tokens")
    ax.axhline(face_rig_lib.LIP_CLOSURE_THRESHOLD, color="grey", lw=0.5)
    ax.set_title(r["title"], fontsize=9)
    ax.set_ylabel("lip_closure")
  axes[0, 0].legend(fontsize=8, loc="upper right")
  axes[-1, 0].set_xlabel("seconds (ground-truth time)")
  fig.tight_layout()
  tmp = path + ".tmp.png"
  fig.savefig(tmp, dpi=90)
  plt.close(fig)
  os.replace(tmp, path)


def evaluate_text(args, log=print) -> dict[str, Any]:
  """Runs the evaluation for parsed `args`; returns the report (also written to disk).

  Raises:
    InputError / inference.AvatarError: bad input (the CLI prints one line, exit code 2).
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  check_arguments(args)
  start = time.perf_counter()
  from avflow_jax import api  # pylint: disable=g-import-not-at-top  (imports JAX)
  from avflow_jax import t2t_data  # pylint: disable=g-import-not-at-top

  t2t = api.load_text_to_tokens(args.t2t_workdir, which=args.which)
  avatar = api.Avatar.load(args.workdir, which=args.which, data_dir=args.data_dir)
  loaded, rig = avatar.loaded, avatar.face_rig
  if rig is None:
    raise InputError(f"--workdir {args.workdir}: its data has no face rig (manifest "
                     "face_decoder is null), so lip closures cannot be read from face codes")
  t2t_step = t2t.step
  log(f"loaded {t2t.workdir} (step {t2t_step}) and {loaded.workdir} (step {loaded.step})")
  seen = _seen_texts(t2t.config, loaded, args.split)

  output = args.output or os.path.join(t2t.workdir, "eval_text",
                                       f"{args.split}-step{t2t_step}", "report.json")
  output = os.path.abspath(os.path.expanduser(output))
  out_dir, stem = os.path.dirname(output), os.path.splitext(os.path.basename(output))[0]
  try:
    os.makedirs(out_dir, exist_ok=True)
  except OSError as e:
    raise InputError(f"--output {output}: cannot create {out_dir} ({e.strerror})") from e

  utts = list(_utterances(loaded, args.split))
  if not utts:
    raise InputError(f"--split {args.split!r}: no clip has utterances (record field "
                     "'utterances' or 'text')")
  if args.max_utterances:
    utts = utts[:args.max_utterances]
  events = {k: ([], []) for k in ("text", "linear", "gt_tokens", "unseen")}
  rows, plotted = [], []
  timings = {"text_to_tokens": 0.0, "sample": 0.0}
  bar = tqdm(utts, unit="utt", desc=f"evaluate_text {args.split}", file=sys.stderr,
             dynamic_ncols=True)
  for i, (clip, text, s, e, record) in enumerate(bar):
    gt_tokens = _slice(record, "tokens", s, e)
    gt_face = _slice(record, "face", s, e)
    mask = record.get("face_mask")
    obs = np.ones((e - s,), bool) if mask is None else np.asarray(mask)[s:e] > 0.5
    gt_part = _slice(record, "participant", s, e) if loaded.uses_participant else None

    t0 = time.perf_counter()
    pred_tokens = api.text_to_tokens(text, t2t, seed=args.seed + i)
    t1 = time.perf_counter()
    pred_of_gt, gt_of_pred = dtw_align(pred_tokens, gt_tokens)
    part = None if gt_part is None else gt_part[gt_of_pred]
    from_text = avatar.sample_motion(pred_tokens, seed=args.seed + i, num_steps=args.steps,
                                     participant=part)["face"][0]
    from_gt = avatar.sample_motion(gt_tokens, seed=args.seed + i, num_steps=args.steps,
                                   participant=gt_part)["face"][0]
    t2 = time.perf_counter()
    timings["text_to_tokens"] += t1 - t0
    timings["sample"] += t2 - t1

    gt_closed = face_rig_lib.closure(rig.decode(gt_face))
    text_ch = rig.decode(from_text)
    aligned = face_rig_lib.closure(text_ch)[pred_of_gt]
    linear = face_rig_lib.closure(text_ch)[linear_index(len(from_text), e - s)]
    gt_tok = face_rig_lib.closure(rig.decode(from_gt))
    is_seen = "*" in seen or t2t_data.text_key(text) in seen
    for key, pred in (("text", aligned), ("linear", linear), ("gt_tokens", gt_tok)) + (
        () if is_seen else (("unseen", aligned),)):
      events[key][0].append(gt_closed[obs])
      events[key][1].append(pred[obs])
    agree = np.mean(np.argmax(pred_tokens[pred_of_gt], -1) == np.argmax(gt_tokens, -1))
    rows.append({"clip": clip, "text": text, "start": s, "end": e, "seen": is_seen,
                 "gt_frames": e - s, "pred_frames": int(len(pred_tokens)),
                 "F1_lips": metrics.f1_binary(gt_closed[obs], aligned[obs]),
                 "F1_lips_gt_tokens": metrics.f1_binary(gt_closed[obs], gt_tok[obs]),
                 "token_agreement": float(agree)})
    if len(plotted) < PLOTTED_UTTERANCES:
      plotted.append({"title": f"{clip} [{s}:{e}] {text}",
                      "gt": rig.decode(gt_face)[:, face_rig_lib.CHANNELS.index("lip_closure")],
                      "text": text_ch[pred_of_gt, face_rig_lib.CHANNELS.index("lip_closure")],
                      "gt_tokens": rig.decode(from_gt)[:, face_rig_lib.CHANNELS.index(
                          "lip_closure")]})
    bar.set_postfix(F1=f"{rows[-1]['F1_lips']:.3f}")
  bar.close()

  def pooled(key):
    g, p = events[key]
    return metrics.f1_binary(np.concatenate(g), np.concatenate(p)) if g else None

  values = {
      "F1_lips": pooled("text"),
      "F1_lips_unseen": pooled("unseen"),
      "F1_lips_linear": pooled("linear"),
      "F1_lips_gt_tokens": pooled("gt_tokens"),
      "token_agreement": float(np.mean([r["token_agreement"] for r in rows])),
      "duration_ratio": float(np.mean([r["pred_frames"] / r["gt_frames"] for r in rows])),
  }
  timings["total"] = time.perf_counter() - start
  report = {
      "format_version": REPORT_VERSION,
      "t2t_workdir": t2t.workdir, "t2t_step": t2t_step,
      "workdir": loaded.workdir, "checkpoint_step": loaded.step,
      "data_dir": loaded.data_dir, "split": args.split,
      "num_utterances": len(rows), "num_unseen": sum(not r["seen"] for r in rows),
      "seconds_evaluated": float(sum(r["gt_frames"] for r in rows) / C.FRAME_RATE),
      "alignment": "DTW of z-normalised token logits (Euclidean), face not used",
      "metrics": values,
      "config": {"which": args.which, "num_steps": args.steps, "seed": args.seed,
                 "t2t_sample": dict(t2t.config.sample),
                 "lip_closure_threshold": face_rig_lib.LIP_CLOSURE_THRESHOLD},
      "utterances": rows,
      "timings_s": timings,
  }
  if not args.no_plots and plotted:
    _plot_lips(os.path.join(out_dir, stem + "_lips.png"), plotted)
  evaluate_lib.write_atomic(os.path.join(out_dir, stem + ".md"), render_markdown(report))
  evaluate_lib.write_atomic(output, json.dumps(report, indent=2, allow_nan=False) + "\n")
  report["output"] = output
  log("  ".join(f"{k} {evaluate_lib._fmt(v)}" for k, v in values.items()))  # pylint: disable=protected-access
  log(f"wrote {output} in {timings['total']:.1f} s")
  return report


def render_markdown(report: dict) -> str:
  m = report["metrics"]
  fmt = evaluate_lib._fmt  # pylint: disable=protected-access
  lines = [
      f"# Text -> tokens -> avatar: {report['split']} split",
      "",
      f"Text model {report['t2t_workdir']} (step {report['t2t_step']}), avatar "
      f"{report['workdir']} (step {report['checkpoint_step']}); {report['num_utterances']} "
      f"utterances ({report['num_unseen']} with sentences unseen by the text model), "
      f"{report['seconds_evaluated']:.1f} s. Alignment: {report['alignment']}.",
      "",
      "| metric | value |",
      "|---|---|",
  ]
  lines += [f"| {k} | {fmt(v)} |" for k, v in m.items()]
  return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
  return cli.run(argv, make_parser, evaluate_text, (InputError,))


if __name__ == "__main__":
  sys.exit(main())
