"""What `evaluate_text` writes: its report (the JSON's contents), markdown summary, lip plot."""

from typing import Any

import numpy as np

from avflow_jax.core import constants as C
from avflow_jax.core import face_rig as face_rig_lib
from avflow_jax.core import files
from avflow_jax.evaluation import common

REPORT_VERSION = 1
ALIGNMENT = ("within each sentence, DTW of z-normalised token logits (Euclidean; the face is "
             "not used); pauses keep their length")
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


def build_report(args, t2t, loaded, scores, values: dict, timings: dict) -> dict[str, Any]:
  """The report of one evaluation (what the JSON holds).

  Args:
    args: the parsed flags of `text_scoring.make_parser`.
    t2t: the loaded text-to-tokens run (`inference.text_tokens`).
    loaded: the avatar's `inference.loading.LoadedAvatar`.
    scores: the `lip_scoring.LipScores` of every evaluated clip.
    values: `scores.summary()`.
    timings: seconds per stage.
  """
  rows, clip_rows = scores.utterances, scores.clips
  return {
      "format_version": REPORT_VERSION,
      "t2t_workdir": t2t.workdir, "t2t_step": t2t.step,
      "workdir": loaded.workdir, "checkpoint_step": loaded.step,
      "data_dir": loaded.data_dir, "split": args.split,
      "num_clips": len(clip_rows), "num_utterances": len(rows),
      "num_unseen": sum(not r["seen"] for r in rows),
      "seconds_evaluated": float(sum(r["frames"] for r in clip_rows) / C.FRAME_RATE),
      "speech_seconds": float(sum(r["gt_frames"] for r in rows) / C.FRAME_RATE),
      "alignment": ALIGNMENT,
      "metrics": values,
      "config": {"which": args.which, "num_steps": args.steps, "seed": args.seed,
                 "t2t_sample": dict(t2t.config.sample),
                 "lip_closure_threshold": face_rig_lib.LIP_CLOSURE_THRESHOLD},
      "clips": clip_rows,
      "utterances": rows,
      "timings_s": timings,
  }


def render_markdown(report: dict) -> str:
  """The markdown summary of a report: what was scored, then each metric with its meaning."""
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


def plot_lips(path: str, rows: list[dict]) -> None:
  """Writes the lip-closure curves of `rows` (`LipScores.plotted`) to the PNG `path`."""
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
