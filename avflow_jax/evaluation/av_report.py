"""What `evaluate` writes: its report (the JSON's contents), markdown summary and per-clip plots."""

from typing import Any

from avflow_jax.core import constants as C
from avflow_jax.core import face_rig as face_rig_lib
from avflow_jax.evaluation import av_metrics
from avflow_jax.evaluation import common
from avflow_jax.evaluation import metrics
from avflow_jax.evaluation import speech_recognition

REPORT_VERSION = 2  # 2: WER, jitter and the vocoded ground-truth row.


def build_report(args, avatar, per_clip: list, summary: tuple, recognizer,
                 timings: dict) -> dict[str, Any]:
  """The report of one evaluation (what the JSON holds).

  Args:
    args: the parsed flags of `scoring.make_parser`.
    avatar: the evaluated `inference.avatar.Avatar`.
    per_clip: the per-clip rows (`av_metrics.MetricAccumulator.per_clip`).
    summary: (metrics, unavailable, reference) of `av_metrics.MetricAccumulator.summary`.
    recognizer: the speech recogniser used, or None.
    timings: seconds per stage.
  """
  values, unavailable, reference = summary
  loaded = avatar.loaded
  cfg = loaded.config
  return {
      "format_version": REPORT_VERSION,
      "workdir": loaded.workdir,
      "checkpoint_step": loaded.step,
      "data_dir": loaded.data_dir,
      "split": args.split,
      "num_clips": len(per_clip),
      "seconds_evaluated": float(sum(r["seconds"] for r in per_clip)),
      "metrics": values,
      "unavailable": unavailable,
      "reference": reference,
      "config": {
          "oracle": bool(args.oracle), "which": args.which, "num_steps": args.steps,
          "temperature": args.temperature,
          "recogniser": (f"pocketsphinx en-us (maxhmmpf {speech_recognition.MAX_HMM_PER_FRAME})"
                         if recognizer is not None else None),
          "seed": args.seed, "max_seconds": args.max_seconds, "max_clips": args.max_clips,
          "vocoder": avatar.vocoder.name, "face_decoder": loaded.manifest.get("face_decoder"),
          "head_kind": loaded.manifest.get("head_kind"), "dims": loaded.dims,
          "participant": loaded.uses_participant, "train_num_steps": cfg.get("num_steps"),
          "model": {k: cfg.model.get(k) for k in ("variant", "d_model", "num_layers", "num_heads",
                                                  "hidden_dim", "dtype") if k in cfg.model},
      },
      "parameters": {
          "beat_sigma_s": metrics.BEAT_SIGMA_S,
          "velocity_smooth_s": metrics.VELOCITY_SMOOTH_S,
          "mcd_n_cepstra": metrics.MCD_N_CEPSTRA,
          "lip_closure_threshold": face_rig_lib.LIP_CLOSURE_THRESHOLD,
          "smile_threshold": face_rig_lib.SMILE_THRESHOLD,
          "jitter_fps": C.VIDEO_FPS, "wer_pad_s": speech_recognition.PAD_S,
          "frame_rate": C.FRAME_RATE, "sample_rate": C.SAMPLE_RATE,
      },
      "clips": per_clip,
      "timings_s": timings,
  }


def render_markdown(report: dict) -> str:
  """The markdown summary of a report (see `scoring.evaluate`)."""
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
      "| metric | generated | ground truth | vocoded ground truth | better |",
      "|---|---|---|---|---|",
  ]
  ref = report["reference"]
  for k in av_metrics.METRIC_KEYS:
    lines.append(f"| {k} | {common.fmt(report['metrics'][k])} | "
                 f"{common.fmt(ref['ground_truth'].get(k))} | "
                 f"{common.fmt(ref['vocoded_ground_truth'].get(k))} | "
                 f"{av_metrics.DIRECTION[k]} |")
  if report["unavailable"]:
    lines += ["", "Not available:", ""]
    lines += [f"* {k}: {v}" for k, v in report["unavailable"].items()]
  lines += ["", "See docs/evaluation.md for the definitions and fixed parameters.", "",
            "## Per clip", "",
            "| clip | seconds | " + " | ".join(av_metrics.PER_CLIP_KEYS) + " |",
            "|---|---|" + "---|" * len(av_metrics.PER_CLIP_KEYS)]
  for r in report["clips"]:
    lines.append(f"| {r['name']} | {r['seconds']:.2f} | "
                 + " | ".join(common.fmt(r.get(k)) for k in av_metrics.PER_CLIP_KEYS) + " |")
  plotted = [r for r in report["clips"] if r.get("plot")]
  if plotted:
    lines += ["", "## Plots", "", "Solid: generated; dashed: ground truth.", ""]
    for r in plotted:
      lines += [f"### {r['name']}", "", f"![{r['name']}]({r['plot']})", ""]
  return "\n".join(lines).rstrip() + "\n"


def plot_clip(path: str, clip: av_metrics.ClipStreams, rig) -> None:
  """Writes the PNG of one clip: mel, face channels (codes without a rig), head pose."""
  from avflow_jax.core import plots  # pylint: disable=g-import-not-at-top
  face, gt_face, names = clip.gen_face, clip.gt_face, None
  if rig is not None:
    face, gt_face = rig.decode(face, clip=True), rig.decode(gt_face, clip=True)
    names = list(face_rig_lib.CHANNELS)
  plots.plot_sample(path, mel=clip.gen_mel, frame_rate=C.FRAME_RATE, face=face,
                    channel_names=names, head=clip.gen_head,
                    gt={"mel": clip.gt_mel, "face": gt_face, "head": clip.gt_head},
                    title=clip.name)
