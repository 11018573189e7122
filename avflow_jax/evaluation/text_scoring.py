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
from avflow_jax.core import constants as C
from avflow_jax.core import face_rig as face_rig_lib
from avflow_jax.core import files
from avflow_jax.core.errors import AvatarError
from avflow_jax.core.errors import InputError
from avflow_jax.data import clips
from avflow_jax.evaluation import common
from avflow_jax.evaluation import metrics

REPORT_VERSION = 1
PLOTTED_UTTERANCES = 4


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


# ---- Alignment -----------------------------------------------------------------------------------

def dtw_align(pred_tokens: np.ndarray, gt_tokens: np.ndarray,
              token_mean: float = C.TOKEN_MEAN,
              token_std: float = C.TOKEN_STD) -> tuple[np.ndarray, np.ndarray]:
  """Aligns predicted to ground-truth token frames by DTW.

  Args:
    pred_tokens: (N, 29) raw logits predicted from text.
    gt_tokens: (M, 29) raw logits of the recording.
    token_mean, token_std: the text-to-tokens run's statistics, for the z-normalisation (one
      scalar pair for both sequences: it scales the Euclidean cost uniformly).

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
  if not (np.isfinite(token_mean) and np.isfinite(token_std) and token_std > 0):
    raise ValueError(f"dtw_align: token statistics ({token_mean}, {token_std}) must be finite "
                     "with a positive std")
  mean, std = np.asarray(token_mean, np.float64), np.asarray(token_std, np.float64)
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


# ---- The run -------------------------------------------------------------------------------------

def _clips(loaded, split: str, strict: bool = True):
  """Yields (clip name, record, [(text, start, end)] sorted by start) for the split's clips.

  With `strict`, overlapping utterances are an InputError naming the clip; otherwise (reading
  the training split only for its statistics) the clip is still yielded.
  """
  from avflow_jax.data import utterances  # pylint: disable=g-import-not-at-top
  shards, entries = clips.split_entries(loaded.data_dir, loaded.manifest, split)
  page_size = clips.page_frames(loaded.manifest)
  for e, record in clips.iter_split_records(shards, entries, page_size):
    where = f"{loaded.data_dir} split {split!r} clip {e['name']!r}"
    try:
      utts = sorted(utterances.clip_utterances(record, where), key=lambda u: u[1])
    except ValueError as err:
      if not strict:
        continue
      raise InputError(str(err)) from err
    if strict:
      for (_, _, prev_end), (text, start, _) in zip(utts, utts[1:]):
        if start < prev_end:
          raise InputError(f"{where}: utterance {text!r} starts at frame {start}, before the "
                           f"previous one ends ({prev_end})")
    yield e["name"], record, utts


def speakable(utts: list, add_blank: bool = True) -> tuple[list, list]:
  """Splits utterances into (speakable, unspeakable): the latter phonemise to nothing.

  Training skips such utterances (utterances.build_utterance_index); here they count as pauses.
  """
  from avflow_jax.text import frontend  # pylint: disable=g-import-not-at-top
  keep, drop = [], []
  for u in utts:
    (keep if frontend.text_to_ids(u[0], add_blank=add_blank).size > int(add_blank)
     else drop).append(u)
  return keep, drop


def training_split_summary(loaded, t2t_config, train_split: str):
  """One pass over the training split: (pause token frame or None, sentences the text model saw).

  The pause frame is the mean token frame outside utterances (what the ASR sees in a pause; from
  the training data, never the evaluated clip), None when the split has no pause at all. The
  seen sentences are the `text_key`s of the training split's utterances, minus those of the
  text model's `data.holdout_split` (as its training left them out).
  """
  from avflow_jax.data import utterances  # pylint: disable=g-import-not-at-top
  total, count, seen = np.zeros((C.TOKEN_DIM,), np.float64), 0, set()
  for _, record, utts in _clips(loaded, train_split, strict=False):
    tokens = np.asarray(record["tokens"], np.float64)
    pause = np.ones((tokens.shape[0],), bool)
    for text, s, e in utts:
      pause[s:e] = False
      seen.add(utterances.text_key(text))
    total += tokens[pause].sum(0)
    count += int(pause.sum())
  held = t2t_config.data.get("holdout_split", "")
  if held and held != train_split:
    seen -= {utterances.text_key(text) for _, _, utts in _clips(loaded, held, strict=False)
             for text, _, _ in utts}
  return ((total / count).astype(np.float32) if count else None), seen


def text_driven_clip(record: dict, utts: list, predict, silence: np.ndarray,
                     token_stats: tuple[float, float] = (C.TOKEN_MEAN, C.TOKEN_STD)) -> dict:
  """Replaces each utterance's tokens by tokens predicted from its text; pauses get `silence`.

  Args:
    record: decoded clip record (its "tokens" give the ground-truth time axis).
    utts: [(text, start, end)] sorted, non-overlapping.
    predict: text, utterance index -> (N, 29) predicted tokens.
    silence: (29,) token frame for the pauses (None: the clip must have none).
    token_stats: (mean, std) of the text-to-tokens run, for `dtw_align`.

  Returns:
    {"tokens": (T', 29) text-driven tokens, "gen_of_gt": (T,) frame of the text-driven
    sequence shown at each ground-truth frame, "gt_of_gen": (T',) the inverse map,
    "utterances": per utterance {"pred": tokens, "gen_start", "gen_end"}}.
  """
  gt_tokens = np.asarray(record["tokens"], np.float32)
  n_gt = gt_tokens.shape[0]
  pieces, gen_of_gt, gt_of_gen, per_utt = [], np.zeros((n_gt,), np.int64), [], []
  pos = cursor = 0  # pos: frames of the text-driven sequence so far; cursor: ground-truth frame.

  def pause(until):
    nonlocal pos, cursor
    n = until - cursor
    if n > 0:
      if silence is None:
        raise ValueError(f"frames [{cursor}, {until}) lie outside every utterance, but the "
                         "training split has no pause to learn a pause token from")
      pieces.append(np.broadcast_to(silence, (n, C.TOKEN_DIM)))
      gen_of_gt[cursor:until] = pos + np.arange(n)
      gt_of_gen.append(cursor + np.arange(n))
      pos, cursor = pos + n, until

  for k, (text, s, e) in enumerate(utts):
    pause(s)
    pred = np.asarray(predict(text, k), np.float32)
    pred_of_gt, gt_of_pred = dtw_align(pred, gt_tokens[s:e], *token_stats)
    pieces.append(pred)
    gen_of_gt[s:e] = pos + pred_of_gt
    gt_of_gen.append(s + gt_of_pred)
    per_utt.append({"pred": pred, "gen_start": pos, "gen_end": pos + len(pred)})
    pos, cursor = pos + len(pred), e
  pause(n_gt)
  return {"tokens": np.concatenate(pieces), "gen_of_gt": gen_of_gt,
          "gt_of_gen": np.concatenate(gt_of_gen), "utterances": per_utt}


class _Events:
  """Pooled ground-truth / generated event masks per named frame set."""

  def __init__(self):
    self.pairs: dict[str, tuple[list, list]] = {}

  def add(self, key: str, gt: np.ndarray, gen: np.ndarray) -> None:
    g, p = self.pairs.setdefault(key, ([], []))
    g.append(gt)
    p.append(gen)

  def f1(self, key: str) -> Optional[float]:
    if key not in self.pairs:
      return None
    g, p = self.pairs[key]
    return metrics.f1_binary(np.concatenate(g), np.concatenate(p))


def _plot_lips(path: str, rows: list[dict]) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.2 * len(rows)), squeeze=False)
  for ax, r in zip(axes[:, 0], rows):
    t = (r["start"] + np.arange(len(r["gt"]))) / C.FRAME_RATE
    ax.plot(t, r["gt"], "k--", label="ground truth")
    ax.plot(t, r["text"], "C0", label="from text (DTW-aligned)")
    ax.plot(t, r["gt_tokens"], "C1", alpha=0.6, label="from ground-truth tokens")
    ax.axhline(face_rig_lib.LIP_CLOSURE_THRESHOLD, color="grey", lw=0.5)
    ax.set_title(r["title"], fontsize=9)
    ax.set_ylabel("lip_closure")
  axes[0, 0].legend(fontsize=8, loc="upper right")
  axes[-1, 0].set_xlabel("seconds into the clip (ground-truth time)")
  fig.tight_layout()
  try:
    with files.atomic_path(path) as tmp:
      fig.savefig(tmp, dpi=90, format="png")
  finally:
    plt.close(fig)


def evaluate_text(args, log=print) -> dict[str, Any]:
  """Runs the evaluation for parsed `args`; returns the report (also written to disk).

  Raises:
    InputError / inference.AvatarError: bad input (the CLI prints one line, exit code 2).
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  check_arguments(args)
  start = time.perf_counter()
  from avflow_jax.data import utterances  # pylint: disable=g-import-not-at-top
  from avflow_jax.inference import avatar as avatar_lib  # pylint: disable=g-import-not-at-top  (imports JAX)
  from avflow_jax.inference import text_tokens

  t2t = text_tokens.load_text_to_tokens(args.t2t_workdir, which=args.which)
  avatar = avatar_lib.Avatar.load(args.workdir, which=args.which, data_dir=args.data_dir)
  loaded, rig = avatar.loaded, avatar.face_rig
  if rig is None:
    raise InputError(f"--workdir {args.workdir}: its data has no face rig (manifest "
                     "face_decoder is null), so lip closures cannot be read from face codes")
  log(f"loaded {t2t.workdir} (step {t2t.step}) and {loaded.workdir} (step {loaded.step})")
  train_split = loaded.config.data.get("train_split", "train")
  silence, seen = training_split_summary(loaded, t2t.config, train_split)
  add_blank = bool(t2t.config.data.get("add_blank", True))

  output = args.output or os.path.join(t2t.workdir, "eval_text",
                                       f"{args.split}-step{t2t.step}", "report.json")
  output, out_dir, stem = common.report_location(output)

  def evaluated_clips():
    """Clips with at least one speakable sentence, read one at a time (up to --max-clips)."""
    for name, record, utts in _clips(loaded, args.split):
      utts, dropped = speakable(utts, add_blank)
      if dropped:
        log(f"clip {name}: {len(dropped)} utterance(s) with no speakable symbols count as "
            f"pauses ({dropped[0][0]!r}, ...)")
      if utts:
        needed = ("tokens", "face") + (("participant",) if loaded.uses_participant else ())
        missing = [k for k in needed if k not in record]
        if missing:
          raise InputError(f"{loaded.data_dir} split {args.split!r} clip {name!r}: record has "
                           f"no {', '.join(missing)} field")
        yield name, record, utts

  lip = face_rig_lib.CHANNELS.index("lip_closure")
  events, rows, clip_rows, plotted = _Events(), [], [], []
  timings = {"text_to_tokens": 0.0, "sample": 0.0}
  bar = tqdm(itertools.islice(evaluated_clips(), args.max_clips), unit="clip",
             desc=f"evaluate_text {args.split}", file=sys.stderr, dynamic_ncols=True)
  for i, (name, record, utts) in enumerate(bar):
    t0 = time.perf_counter()

    def predict(text, k, i=i, name=name):
      try:
        return text_tokens.text_to_tokens(text, t2t, seed=args.seed + 100_000 * i + k)
      except AvatarError as e:
        raise InputError(f"clip {name!r} sentence {k} ({text!r}): {e}") from e

    try:
      driven = text_driven_clip(record, utts, predict, silence,
                                (t2t.token_mean, t2t.token_std))
    except ValueError as e:
      raise InputError(f"clip {name!r}: {e}") from e
    t1 = time.perf_counter()
    part = (np.asarray(record["participant"], np.float32) if loaded.uses_participant else None)
    gt_tokens = np.asarray(record["tokens"], np.float32)
    from_text = avatar.sample_motion(
        driven["tokens"], seed=args.seed + i, num_steps=args.steps,
        participant=None if part is None else part[driven["gt_of_gen"]])["face"][0]
    from_gt = avatar.sample_motion(gt_tokens, seed=args.seed + i, num_steps=args.steps,
                                   participant=part)["face"][0]
    timings["text_to_tokens"] += t1 - t0
    timings["sample"] += time.perf_counter() - t1

    gt_face = np.asarray(record["face"], np.float32)
    n = gt_face.shape[0]
    mask = record.get("face_mask")
    obs = np.ones((n,), bool) if mask is None else np.asarray(mask)[:n] > 0.5
    gt_ch, text_ch, gtt_ch = (rig.decode(gt_face), rig.decode(from_text)[driven["gen_of_gt"]],
                              rig.decode(from_gt))
    closed = {k: face_rig_lib.closure(v) for k, v in
              (("gt", gt_ch), ("text", text_ch), ("gt_tokens", gtt_ch))}
    speech = np.zeros((n,), bool)
    for k, (text, s, e) in enumerate(utts):
      speech[s:e] = True
      o = obs[s:e]
      g = closed["gt"][s:e][o]
      events.add("speech", g, closed["text"][s:e][o])
      events.add("speech_gt_tokens", g, closed["gt_tokens"][s:e][o])
      is_seen = "*" in seen or utterances.text_key(text) in seen
      if not is_seen:
        events.add("speech_unseen", g, closed["text"][s:e][o])
      u = driven["utterances"][k]
      pred = u["pred"]
      agree = np.mean(np.argmax(pred[driven["gen_of_gt"][s:e] - u["gen_start"]], -1)
                      == np.argmax(gt_tokens[s:e], -1))
      rows.append({"clip": name, "text": text, "start": s, "end": e, "seen": is_seen,
                   "gt_frames": e - s, "pred_frames": int(len(pred)),
                   "F1_lips": metrics.f1_binary(g, closed["text"][s:e][o]),
                   "F1_lips_gt_tokens": metrics.f1_binary(g, closed["gt_tokens"][s:e][o]),
                   "token_agreement": float(agree)})
      if len(plotted) < PLOTTED_UTTERANCES:
        a, b = max(s - 20, 0), min(e + 20, n)  # a little of the pause around it.
        plotted.append({"title": f"{name} [{s}:{e}] {text}", "start": a,
                        "gt": gt_ch[a:b, lip], "text": text_ch[a:b, lip],
                        "gt_tokens": gtt_ch[a:b, lip]})
    events.add("clip", closed["gt"][obs], closed["text"][obs])
    events.add("clip_gt_tokens", closed["gt"][obs], closed["gt_tokens"][obs])
    clip_rows.append({"clip": name, "frames": n, "speech_frames": int(speech.sum()),
                      "gt_closed_frames": int(closed["gt"][obs].sum()),
                      "gt_closed_speech_frames": int(closed["gt"][obs & speech].sum()),
                      "text_driven_frames": int(len(driven["tokens"])),
                      "F1_lips": metrics.f1_binary(closed["gt"][obs], closed["text"][obs]),
                      "F1_lips_gt_tokens": metrics.f1_binary(closed["gt"][obs],
                                                             closed["gt_tokens"][obs])})
    bar.set_postfix(F1=f"{clip_rows[-1]['F1_lips']:.3f}")
  bar.close()
  if not rows:
    raise InputError(f"--split {args.split!r}: no clip has a speakable utterance (record field "
                     "'utterances' or 'text')")

  values = {
      "F1_lips": events.f1("clip"),
      "F1_lips_gt_tokens": events.f1("clip_gt_tokens"),
      "F1_lips_speech": events.f1("speech"),
      "F1_lips_speech_gt_tokens": events.f1("speech_gt_tokens"),
      "F1_lips_speech_unseen": events.f1("speech_unseen"),
      "token_agreement": float(np.mean([r["token_agreement"] for r in rows])),
      "duration_ratio": float(np.mean([r["pred_frames"] / r["gt_frames"] for r in rows])),
  }
  closed_total = sum(r["gt_closed_frames"] for r in clip_rows)
  values["gt_closed_in_pauses"] = (
      1.0 - sum(r["gt_closed_speech_frames"] for r in clip_rows) / closed_total
      if closed_total else None)
  timings["total"] = time.perf_counter() - start
  report = {
      "format_version": REPORT_VERSION,
      "t2t_workdir": t2t.workdir, "t2t_step": t2t.step,
      "workdir": loaded.workdir, "checkpoint_step": loaded.step,
      "data_dir": loaded.data_dir, "split": args.split,
      "num_clips": len(clip_rows), "num_utterances": len(rows),
      "num_unseen": sum(not r["seen"] for r in rows),
      "seconds_evaluated": float(sum(r["frames"] for r in clip_rows) / C.FRAME_RATE),
      "speech_seconds": float(sum(r["gt_frames"] for r in rows) / C.FRAME_RATE),
      "alignment": ("within each sentence, DTW of z-normalised token logits (Euclidean; the "
                    "face is not used); pauses keep their length"),
      "metrics": values,
      "config": {"which": args.which, "num_steps": args.steps, "seed": args.seed,
                 "t2t_sample": dict(t2t.config.sample),
                 "lip_closure_threshold": face_rig_lib.LIP_CLOSURE_THRESHOLD},
      "clips": clip_rows,
      "utterances": rows,
      "timings_s": timings,
  }
  if not args.no_plots and plotted:
    _plot_lips(os.path.join(out_dir, stem + "_lips.png"), plotted)
  files.write_atomic(os.path.join(out_dir, stem + ".md"), render_markdown(report))
  files.write_atomic(output, json.dumps(report, indent=2, allow_nan=False) + "\n")
  report["output"] = output
  log("  ".join(f"{k} {common.fmt(v)}" for k, v in values.items()))  # pylint: disable=protected-access
  log(f"wrote {output} in {timings['total']:.1f} s")
  return report


_MEANING = {
    "F1_lips": "whole clips, pauses included (the avatar metric of `evaluate`)",
    "F1_lips_gt_tokens": "the same frames, avatar driven by ground-truth tokens (ceiling)",
    "F1_lips_speech": "sentence frames only",
    "F1_lips_speech_gt_tokens": "sentence frames only, ground-truth tokens (ceiling)",
    "F1_lips_speech_unseen": "sentence frames of sentences the text model never saw",
    "token_agreement": "DTW-aligned frames whose most likely character agrees",
    "duration_ratio": "predicted / recorded sentence length",
    "gt_closed_in_pauses": "share of the recorded lip-closure frames that lie in pauses",
}


def render_markdown(report: dict) -> str:
  m = report["metrics"]
  fmt = common.fmt
  lines = [
      f"# Text -> tokens -> avatar: {report['split']} split",
      "",
      f"Text model {report['t2t_workdir']} (step {report['t2t_step']}), avatar "
      f"{report['workdir']} (step {report['checkpoint_step']}); {report['num_clips']} clips, "
      f"{report['seconds_evaluated']:.1f} s, of which {report['speech_seconds']:.1f} s in "
      f"{report['num_utterances']} sentences ({report['num_unseen']} unseen by the text "
      f"model). Alignment: {report['alignment']}.",
      "",
      "| metric | value | meaning |",
      "|---|---|---|",
  ]
  lines += [f"| {k} | {fmt(v)} | {_MEANING.get(k, '')} |" for k, v in m.items()]
  return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
  return cli.run(argv, make_parser, evaluate_text, (InputError,))


if __name__ == "__main__":
  sys.exit(main())
