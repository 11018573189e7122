"""What a prepare run commits and reports: manifest.json's fields and its summary.

`build_manifest` is the manifest's content (docs/data_format.md), `build_summary` its
"summary" block and `summary_lines` what the run prints at the end.
"""

import collections
import time

from avflow_jax.core import constants as C
from avflow_jax.data import manifest as manifest_lib
import data_prep
from data_prep import shards as shards_lib
from data_prep.source_types import DatasetPlan

MANIFEST = manifest_lib.MANIFEST


def build_manifest(dataset: DatasetPlan, splits: dict, running, face_decoder,
                   skipped: list, summary: dict, prep: dict, page_frames: int) -> dict:
  """manifest.json's content: format, dims, splits, stats, skips, summary, prep."""
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


def build_summary(dataset: DatasetPlan, entries: dict, splits: dict, skipped: list,
                  jobs: list, written: int, t0: float) -> dict:
  """The manifest's "summary": clips and hours written, skips by reason, reuse, time."""
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


def summary_lines(summary: dict, skipped: list) -> list:
  """The summary printed at the end of a run (the first 20 skips named)."""
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
