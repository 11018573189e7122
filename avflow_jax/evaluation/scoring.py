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

The same metrics on the ground truth itself (Div, BC) form a reference row. With --oracle the
ground-truth mel, codes and head pose replace the samples: an upper bound, and a check of the
pipeline (F1 = 1, FDe = 0; MCD is then the vocoder's own distortion).

Output (every file written to a temporary name, then renamed): OUTPUT (JSON: metrics, reference,
per-clip values, config summary, checkpoint step), OUTPUT with suffix .md (a markdown summary)
and one PNG per clip next to it (STEM_CLIP.png: mel, face channels or codes and head pose,
generated solid vs ground truth dashed). A missing workdir, checkpoint or split stops with one
line on stderr and exit code 2.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from typing import Any, Optional

import numpy as np

from avflow_jax.core import cli
from avflow_jax.core import constants as C
from avflow_jax.core import face_rig as face_rig_lib
from avflow_jax.core import files
from avflow_jax.core.errors import InputError
from avflow_jax.data import clips
from avflow_jax.evaluation import common
from avflow_jax.evaluation import metrics

EXIT_BAD_INPUT = 2
DEFAULT_MAX_SECONDS = 20.0
REPORT_VERSION = 1
# Every report has all of these keys in "metrics": a float, or None with a reason in
# "unavailable".
METRIC_KEYS = ("F1_lips", "F1_smiles", "FDe", "Div_h", "Div_e", "BC_h", "BC_e", "MCD")
# Metrics that say something about the ground truth on its own (F1 = 1, FDe = MCD = 0 there).
REFERENCE_KEYS = ("Div_h", "Div_e", "BC_h", "BC_e")
# How to read each metric, for the markdown summary.
_DIRECTION = {"F1_lips": "higher (1 = GT events)", "F1_smiles": "higher (1 = GT events)",
              "FDe": "lower (0 = GT statistics)", "Div_h": "close to GT",
              "Div_e": "close to GT", "BC_h": "close to GT", "BC_e": "close to GT",
              "MCD": "lower (dB)"}
_PER_CLIP_KEYS = ("F1_lips", "F1_smiles", "Div_h", "Div_e", "BC_h", "BC_e", "MCD",
                  "gt_BC_h", "gt_BC_e")



def make_parser() -> argparse.ArgumentParser:
  p = cli.ArgumentParser(prog="python -m avflow_jax.evaluate",
                      description="Scores a trained AV-Flow avatar on held-out clips.")
  p.add_argument("--workdir", required=True, help="AV training workdir (config.json, checkpoints)")
  common.add_scoring_arguments(p, "WORKDIR/eval/SPLIT-stepSTEP[-oracle]/report.json",
                        plots="the per-clip PNGs")
  p.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                 help="evaluate the first S seconds of each clip (0: whole clips)")
  p.add_argument("--vocoder-weights", help="BigVGAN safetensors (default: Griffin-Lim)")
  p.add_argument("--oracle", action="store_true",
                 help="score the ground-truth mel/codes/head instead of samples (upper bound)")
  return p


def check_arguments(args) -> None:
  """Checks that need no model."""
  common.check_scoring_arguments(args)
  if not math.isfinite(args.max_seconds) or args.max_seconds < 0:
    raise InputError(f"--max-seconds {args.max_seconds}: must be a finite number >= 0")
  if args.vocoder_weights and not os.path.isfile(args.vocoder_weights):
    raise InputError(f"--vocoder-weights {args.vocoder_weights}: file missing")


def crop_record(record: dict, max_frames: Optional[int], participant: bool) -> dict:
  """The evaluated part of a record: the first `max_frames` frames of every stream (float32).

  Returns:
    {"name", "tokens", "mel", "face", "face_mask", "head", "audio" (float in [-1, 1] or None),
     "participant" (or None)}.
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
  return out


# ---- Metrics -------------------------------------------------------------------------------------

@dataclasses.dataclass
class ClipStreams:
  """One evaluated clip: ground truth and generated streams on the mel grid.

  `gen_audio` is the vocoded generated mel; `gt_audio` the recorded audio (None if absent).
  """
  name: str
  gt_mel: np.ndarray
  gt_face: np.ndarray
  gt_head: np.ndarray
  face_mask: np.ndarray
  gt_audio: Optional[np.ndarray]
  gen_mel: np.ndarray
  gen_face: np.ndarray
  gen_head: np.ndarray
  gen_audio: np.ndarray


def _finite_or_none(x) -> Optional[float]:
  if x is None:
    return None
  x = float(x)
  return x if math.isfinite(x) else None


def _beats(audio: Optional[np.ndarray], motion: np.ndarray) -> tuple[float, float]:
  """(BC vs head, BC vs codes) of one clip; NaN when the audio is missing or has no onset."""
  if audio is None:
    return float("nan"), float("nan")
  a = metrics.audio_beats(audio, C.SAMPLE_RATE)
  return tuple(metrics.beat_score(a, metrics.motion_beats(m, C.FRAME_RATE)) for m in motion)


class MetricAccumulator:
  """Per-clip scores as clips arrive, and the pooled (all-frame) metrics at the end.

  Pooled metrics keep the frames they need (face codes and head pose, float32: ~2 kB per
  frame for both sides); per-clip ones (BC, MCD) are computed at once and the audio dropped.
  """

  def __init__(self, rig: Optional[face_rig_lib.FaceRig]):
    self.rig = rig
    self.per_clip: list[dict[str, Any]] = []
    self._gt_face_obs, self._gen_face_obs = [], []
    self._gt_face, self._gen_face, self._gt_head, self._gen_head = [], [], [], []
    self._events = {"lips": ([], []), "smiles": ([], [])}

  def add(self, clip: ClipStreams) -> dict[str, Any]:
    """Scores one clip; returns its per-clip values (also kept in `per_clip`)."""
    obs = clip.face_mask
    row: dict[str, Any] = {"name": clip.name, "frames": int(clip.gen_mel.shape[0]),
                           "seconds": clip.gen_mel.shape[0] / C.FRAME_RATE,
                           "observed_face_frames": int(obs.sum())}
    if self.rig is not None and obs.any():
      gt_ch = self.rig.decode(clip.gt_face[obs])
      gen_ch = self.rig.decode(clip.gen_face[obs])
      for key, event in (("lips", face_rig_lib.closure), ("smiles", face_rig_lib.smile)):
        g, p = event(gt_ch), event(gen_ch)
        self._events[key][0].append(g)
        self._events[key][1].append(p)
        row[f"F1_{key}"] = metrics.f1_binary(g, p)
        row[f"gt_{key}_frames"] = int(g.sum())
        row[f"gen_{key}_frames"] = int(p.sum())
    self._gt_face_obs.append(clip.gt_face[obs])
    self._gen_face_obs.append(clip.gen_face[obs])
    self._gt_face.append(clip.gt_face)
    self._gen_face.append(clip.gen_face)
    self._gt_head.append(clip.gt_head)
    self._gen_head.append(clip.gen_head)
    row["Div_h"] = metrics.diversity(clip.gen_head)
    row["Div_e"] = metrics.diversity(clip.gen_face)
    row["BC_h"], row["BC_e"] = _beats(clip.gen_audio, (clip.gen_head, clip.gen_face))
    row["gt_BC_h"], row["gt_BC_e"] = _beats(clip.gt_audio, (clip.gt_head, clip.gt_face))
    row["MCD"] = float("nan")
    if clip.gt_audio is not None and clip.gt_audio.size >= metrics.MCD_N_FFT:
      row["MCD"] = metrics.mcd(clip.gt_audio, clip.gen_audio, C.SAMPLE_RATE)
    row = {k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in row.items()}
    self.per_clip.append(row)
    return row

  def _mean(self, key: str) -> Optional[float]:
    """Mean over the clips where `key` is defined (None where it is defined nowhere)."""
    vals = [r[key] for r in self.per_clip if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None

  def summary(self) -> tuple[dict, dict, dict]:
    """(metrics, unavailable reasons, ground-truth reference row)."""
    out: dict[str, Optional[float]] = {k: None for k in METRIC_KEYS}
    why: dict[str, str] = {}
    n = len(self.per_clip)
    if self.rig is None:
      for k in ("F1_lips", "F1_smiles"):
        why[k] = ("the data has no face decoder (manifest face_decoder is null): lip closures "
                  "and smiles cannot be read from the codes")
    elif not self._events["lips"][0]:
      for k in ("F1_lips", "F1_smiles"):
        why[k] = "no clip has an observed face frame (face_mask is 0 everywhere)"
    else:
      for key in ("lips", "smiles"):
        g, p = (np.concatenate(x) for x in self._events[key])
        out[f"F1_{key}"] = metrics.f1_binary(g, p)
    gt_obs, gen_obs = np.concatenate(self._gt_face_obs), np.concatenate(self._gen_face_obs)
    if gt_obs.shape[0] < 2:
      why["FDe"] = f"only {gt_obs.shape[0]} observed face frame(s); need at least 2"
    else:
      try:
        out["FDe"] = _finite_or_none(metrics.frechet_distance(gt_obs, gen_obs))
      except ValueError as e:
        why["FDe"] = str(e)
      if out["FDe"] is None and "FDe" not in why:
        why["FDe"] = "the Fréchet distance is not finite"
    gen_head, gen_face = np.concatenate(self._gen_head), np.concatenate(self._gen_face)
    out["Div_h"] = _finite_or_none(metrics.diversity(gen_head))
    out["Div_e"] = _finite_or_none(metrics.diversity(gen_face))
    for k in ("BC_h", "BC_e"):
      out[k] = self._mean(k)
      if out[k] is None:
        why[k] = f"no audio onset in the generated speech of any of the {n} clip(s)"
    out["MCD"] = self._mean("MCD")
    if out["MCD"] is None:
      why["MCD"] = ("no clip has ground-truth audio of at least "
                    f"{metrics.MCD_N_FFT} samples (record field 'audio')")
    for k in METRIC_KEYS:
      if out[k] is None and k not in why:
        why[k] = "not finite"
    ref = {"Div_h": _finite_or_none(metrics.diversity(np.concatenate(self._gt_head))),
           "Div_e": _finite_or_none(metrics.diversity(np.concatenate(self._gt_face)))}
    for k in ("BC_h", "BC_e"):
      ref[k] = self._mean("gt_" + k)
    return out, why, ref


# ---- Output --------------------------------------------------------------------------------------

def render_markdown(report: dict) -> str:
  """The markdown summary of a report (see `evaluate`)."""
  cfg = report["config"]
  title = "ground truth through the pipeline (--oracle)" if cfg["oracle"] else "samples"
  lines = [
      f"# AV-Flow evaluation: {title}",
      "",
      f"* run: `{report['workdir']}`, checkpoint step {report['checkpoint_step']} "
      f"({cfg['which']} weights)",
      f"* data: `{report['data_dir']}`, split `{report['split']}`: {report['num_clips']} clips, "
      f"{report['seconds_evaluated']:.1f} s evaluated"
      + (f" (first {cfg['max_seconds']:g} s of each)" if cfg["max_seconds"] else ""),
      f"* sampler: {cfg['num_steps']} Euler steps, seed {cfg['seed']} (clip i: seed + i); "
      f"vocoder: {cfg['vocoder']}",
      "",
      "| metric | generated | ground truth | better |",
      "|---|---|---|---|",
  ]
  for k in METRIC_KEYS:
    lines.append(f"| {k} | {common.fmt(report['metrics'][k])} | "
                 f"{common.fmt(report['reference']['ground_truth'].get(k))} | {_DIRECTION[k]} |")
  if report["unavailable"]:
    lines += ["", "Not available:", ""]
    lines += [f"* {k}: {v}" for k, v in report["unavailable"].items()]
  lines += ["", "See docs/evaluation.md for the definitions and fixed parameters.", "",
            "## Per clip", "",
            "| clip | seconds | " + " | ".join(_PER_CLIP_KEYS) + " |",
            "|---|---|" + "---|" * len(_PER_CLIP_KEYS)]
  for r in report["clips"]:
    lines.append(f"| {r['name']} | {r['seconds']:.2f} | "
                 + " | ".join(common.fmt(r.get(k)) for k in _PER_CLIP_KEYS) + " |")
  plotted = [r for r in report["clips"] if r.get("plot")]
  if plotted:
    lines += ["", "## Plots", "", "Solid: generated; dashed: ground truth.", ""]
    for r in plotted:
      lines += [f"### {r['name']}", "", f"![{r['name']}]({r['plot']})", ""]
  return "\n".join(lines).rstrip() + "\n"


def _plot_clip(path: str, clip: ClipStreams, rig) -> None:
  from avflow_jax.core import plots  # pylint: disable=g-import-not-at-top
  face, gt_face, names = clip.gen_face, clip.gt_face, None
  if rig is not None:
    face, gt_face = rig.decode(face, clip=True), rig.decode(gt_face, clip=True)
    names = list(face_rig_lib.CHANNELS)
  plots.plot_sample(path, mel=clip.gen_mel, frame_rate=C.FRAME_RATE, face=face,
                    channel_names=names, head=clip.gen_head,
                    gt={"mel": clip.gt_mel, "face": gt_face, "head": clip.gt_head},
                    title=clip.name)


# ---- The run -------------------------------------------------------------------------------------

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
                           which=args.which, data_dir=args.data_dir)
  loaded = avatar.loaded
  timings["load"] = time.perf_counter() - start
  log(f"loaded {loaded.workdir} (step {loaded.step}, {args.which} weights) in "
      f"{timings['load']:.1f} s")
  shards, entries = clips.split_entries(loaded.data_dir, loaded.manifest, args.split)
  if args.max_clips:
    entries = entries[:args.max_clips]

  output = args.output or os.path.join(
      loaded.workdir, "eval", f"{args.split}-step{loaded.step}"
      + ("-oracle" if args.oracle else ""), "report.json")
  output, out_dir, stem = common.report_location(output)

  max_frames = int(args.max_seconds * C.FRAME_RATE) if args.max_seconds else None
  rig = loaded.face_rig
  acc = MetricAccumulator(rig)
  bar = tqdm(clips.iter_split_records(shards, entries), total=len(entries), unit="clip",
             desc=f"evaluate {args.split}", file=sys.stderr, dynamic_ncols=True)
  for i, (_, record) in enumerate(bar):
    rec = crop_record(record, max_frames, loaded.uses_participant)
    t0 = time.perf_counter()
    if args.oracle:
      gen = {"mel": rec["mel"], "face": rec["face"], "head": rec["head"]}
    else:
      out = avatar.sample_motion(rec["tokens"], seed=args.seed + i, num_steps=args.steps,
                                 participant=rec["participant"])
      gen = {k: out[k][0] for k in ("mel", "face", "head")}
    t1 = time.perf_counter()
    gen_audio = avatar.vocode(gen["mel"])
    t2 = time.perf_counter()
    clip = ClipStreams(name=rec["name"], gt_mel=rec["mel"], gt_face=rec["face"],
                       gt_head=rec["head"], face_mask=rec["face_mask"], gt_audio=rec["audio"],
                       gen_mel=gen["mel"], gen_face=gen["face"], gen_head=gen["head"],
                       gen_audio=gen_audio)
    row = acc.add(clip)
    t3 = time.perf_counter()
    if not args.no_plots:
      row["plot"] = common.plot_name(stem, clip.name)
      _plot_clip(os.path.join(out_dir, row["plot"]), clip, rig)
    t4 = time.perf_counter()
    for k, dt in (("sample", t1 - t0), ("vocoder", t2 - t1), ("metrics", t3 - t2),
                  ("plot", t4 - t3)):
      timings[k] += dt
    bar.set_postfix(MCD=common.fmt(row.get("MCD")), BC_h=common.fmt(row.get("BC_h")))
  bar.close()

  t0 = time.perf_counter()
  values, unavailable, reference = acc.summary()
  timings["metrics"] += time.perf_counter() - t0
  timings["total"] = time.perf_counter() - start
  cfg = loaded.config
  report = {
      "format_version": REPORT_VERSION,
      "workdir": loaded.workdir,
      "checkpoint_step": loaded.step,
      "data_dir": loaded.data_dir,
      "split": args.split,
      "num_clips": len(acc.per_clip),
      "seconds_evaluated": float(sum(r["seconds"] for r in acc.per_clip)),
      "metrics": values,
      "unavailable": unavailable,
      "reference": {"ground_truth": reference},
      "config": {
          "oracle": bool(args.oracle), "which": args.which, "num_steps": args.steps,
          "seed": args.seed, "max_seconds": args.max_seconds, "max_clips": args.max_clips,
          "vocoder": avatar.vocoder.name, "face_decoder": loaded.manifest.get("face_decoder"),
          "head_kind": loaded.manifest.get("head_kind"), "dims": loaded.dims,
          "participant": loaded.uses_participant, "train_num_steps": cfg.get("num_steps"),
          "model": {k: cfg.model.get(k) for k in ("d_model", "num_layers", "num_heads",
                                                  "hidden_dim", "dtype") if k in cfg.model},
      },
      "parameters": {
          "beat_sigma_s": metrics.BEAT_SIGMA_S,
          "velocity_smooth_s": metrics.VELOCITY_SMOOTH_S,
          "mcd_n_cepstra": metrics.MCD_N_CEPSTRA,
          "lip_closure_threshold": face_rig_lib.LIP_CLOSURE_THRESHOLD,
          "smile_threshold": face_rig_lib.SMILE_THRESHOLD,
          "frame_rate": C.FRAME_RATE, "sample_rate": C.SAMPLE_RATE,
      },
      "clips": acc.per_clip,
      "timings_s": timings,
  }
  files.write_atomic(os.path.join(out_dir, stem + ".md"), render_markdown(report))
  # The JSON last: its presence means the evaluation finished.
  files.write_atomic(output, json.dumps(report, indent=2, allow_nan=False) + "\n")
  report["output"] = output
  log("  ".join(f"{k} {common.fmt(values[k])}" for k in METRIC_KEYS))
  log(f"wrote {output} (+ .md{', plots' if not args.no_plots else ''}) in "
      f"{timings['total']:.1f} s")
  return report


def main(argv: Optional[list[str]] = None) -> int:
  """CLI entry point; returns the exit code (2 for bad input, with one line on stderr)."""
  return cli.run(argv, make_parser, evaluate, (InputError,))


if __name__ == "__main__":
  sys.exit(main())
