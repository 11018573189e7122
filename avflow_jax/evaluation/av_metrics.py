"""The AV evaluation's metrics over a stream of clips: per-clip values and the pooled table.

`MetricAccumulator.add` scores one clip as it arrives (BC, MCD, WER, per-clip F1 and jitter)
and keeps only what the pooled metrics need (codes, head pose, events, jitter sums);
`summary` gives the table, the reasons for any missing metric and the reference rows
(ground truth; the ground truth's mel through the same vocoder).
"""

import dataclasses
import math
from typing import Any, Optional

import numpy as np

from avflow_jax.core import align
from avflow_jax.core import constants as C
from avflow_jax.core import face_rig as face_rig_lib
from avflow_jax.evaluation import metrics
from avflow_jax.evaluation import speech_recognition

# Every report has all of these keys in "metrics": a float, or None with a reason in
# "unavailable".
METRIC_KEYS = ("F1_lips", "F1_smiles", "FDe", "Div_h", "Div_e", "BC_h", "BC_e", "MCD", "WER",
               "Jitter_face", "Jitter_head")
# Metrics that say something about the ground truth on its own (F1 = 1, FDe = MCD = 0 there,
# jitter ratios 1): the recordings' row.
REFERENCE_KEYS = ("Div_h", "Div_e", "BC_h", "BC_e", "WER")
# The ground truth's mel through the evaluation's vocoder: what a perfect mel would score.
VOCODED_KEYS = ("MCD", "WER")
# How to read each metric, for the markdown summary.
DIRECTION = {"F1_lips": "higher (1 = GT events)", "F1_smiles": "higher (1 = GT events)",
             "FDe": "lower (0 = GT statistics)", "Div_h": "close to GT",
             "Div_e": "close to GT", "BC_h": "close to GT", "BC_e": "close to GT",
             "MCD": "lower (dB)", "WER": "lower (vocoded GT: the vocoder's floor)",
             "Jitter_face": "close to 1 (GT)", "Jitter_head": "close to 1 (GT)"}
PER_CLIP_KEYS = ("F1_lips", "F1_smiles", "Div_h", "Div_e", "BC_h", "BC_e", "MCD", "WER",
                 "Jitter_face", "Jitter_head", "gt_BC_h", "gt_BC_e")


@dataclasses.dataclass
class ClipStreams:
  """One evaluated clip: ground truth and generated streams on the mel grid.

  `gen_audio` is the vocoded generated mel; `gt_audio` the recorded audio (None if absent);
  `vocoded_gt_audio` the ground-truth mel through the same vocoder (None: not computed).
  `utterances` are the clip's (text, start, end) mel-frame spans inside the evaluated frames.
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
  utterances: tuple = ()
  vocoded_gt_audio: Optional[np.ndarray] = None


def finite_or_none(x) -> Optional[float]:
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


def to_video_rate(x: np.ndarray, mask: Optional[np.ndarray] = None):
  """A mel-rate stream (and its observation mask) at the 30 fps the preview shows."""
  n = max(1, int(x.shape[0] * C.VIDEO_FPS / C.FRAME_RATE))
  out = align.resample_stream(x, C.FRAME_RATE, n, C.VIDEO_FPS)
  if mask is None:
    return out, None
  soft = align.resample_stream(np.asarray(mask, np.float64), C.FRAME_RATE, n, C.VIDEO_FPS)
  return out, soft >= 1.0 - 1e-6


class MetricAccumulator:
  """Per-clip scores as clips arrive, and the pooled (all-frame) metrics at the end.

  Pooled metrics keep the frames they need (face codes and head pose, float32: ~2 kB per
  frame for both sides); per-clip ones (BC, MCD, WER) are computed at once and the audio
  dropped.

  Args:
    rig: the data's face decoder (None: F1 unavailable, jitter on the codes).
    recognizer: a `speech_recognition.Recognizer` (None: WER unavailable, for `wer_missing`).
    wer_missing: why there is no recogniser (shown in the report).
    reference_wer: also transcribe the recordings and the vocoded ground truth (the reference
      rows' WER); False when another evaluation of the same clips already has them.
  """

  def __init__(self, rig: Optional[face_rig_lib.FaceRig], recognizer=None,
               wer_missing: str = "not requested", reference_wer: bool = True):
    self.rig = rig
    self.recognizer = recognizer
    self.reference_wer = reference_wer
    self.wer_missing = wer_missing
    self.per_clip: list[dict[str, Any]] = []
    self._gt_face_obs, self._gen_face_obs = [], []
    self._gt_face, self._gen_face, self._gt_head, self._gen_head = [], [], [], []
    self._events = {"lips": ([], []), "smiles": ([], [])}
    self._jitter = {"face": metrics.JitterRatio(), "head": metrics.JitterRatio()}
    self._texts = {"ref": [], "gen": [], "gt": [], "vocoded": []}
    self._vocoded_mcd: list[float] = []

  def _face_channels(self, codes: np.ndarray) -> np.ndarray:
    return codes if self.rig is None else self.rig.decode(codes)

  def _add_jitter(self, clip: ClipStreams, row: dict) -> None:
    gt_f, obs = to_video_rate(self._face_channels(clip.gt_face), clip.face_mask)
    gen_f, _ = to_video_rate(self._face_channels(clip.gen_face))
    row["Jitter_face"] = self._jitter["face"].add(gt_f, gen_f, obs)
    gt_h, _ = to_video_rate(clip.gt_head)
    gen_h, _ = to_video_rate(clip.gen_head)
    row["Jitter_head"] = self._jitter["head"].add(gt_h, gen_h)

  def _add_wer(self, clip: ClipStreams, row: dict) -> None:
    if self.recognizer is None or not clip.utterances:
      row["WER"] = float("nan")
      return
    sides = {"gen": clip.gen_audio}
    if self.reference_wer:
      sides.update(gt=clip.gt_audio, vocoded=clip.vocoded_gt_audio)
    refs, gen = [], []
    for text, start, end in clip.utterances:
      refs.append(text)
      for side, audio in sides.items():
        if audio is None:
          continue
        cut = speech_recognition.utterance_audio(audio, start, end, C.HOP_LENGTH,
                                                 C.SAMPLE_RATE)
        hyp = self.recognizer.transcribe(cut, C.SAMPLE_RATE)
        self._texts[side].append(hyp)
        if side == "gen":
          gen.append(hyp)
    self._texts["ref"].extend(refs)
    row["WER"] = speech_recognition.word_error_rate(refs, gen)
    row["transcripts"] = [{"text": r, "generated": h} for r, h in zip(refs, gen)]

  def add(self, clip: ClipStreams) -> dict[str, Any]:
    """Scores one clip; returns its per-clip values (also kept in `per_clip`)."""
    obs = clip.face_mask
    row: dict[str, Any] = {"name": clip.name, "frames": int(clip.gen_mel.shape[0]),
                           "seconds": clip.gen_mel.shape[0] / C.FRAME_RATE,
                           "observed_face_frames": int(obs.sum()),
                           "utterances": len(clip.utterances)}
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
      if clip.vocoded_gt_audio is not None:
        self._vocoded_mcd.append(metrics.mcd(clip.gt_audio, clip.vocoded_gt_audio,
                                             C.SAMPLE_RATE))
    self._add_jitter(clip, row)
    self._add_wer(clip, row)
    row = {k: (finite_or_none(v) if isinstance(v, float) else v) for k, v in row.items()}
    self.per_clip.append(row)
    return row

  def _mean(self, key: str) -> Optional[float]:
    """Mean over the clips where `key` is defined (None where it is defined nowhere)."""
    vals = [r[key] for r in self.per_clip if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None

  def _wer(self, side: str) -> Optional[float]:
    hyps = self._texts[side]
    if not hyps or len(hyps) != len(self._texts["ref"]):
      return None
    return speech_recognition.word_error_rate(self._texts["ref"], hyps)

  def _face_metrics(self, out: dict, why: dict) -> None:
    """F1_lips, F1_smiles and FDe (pooled over the observed frames of every clip)."""
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
        out["FDe"] = finite_or_none(metrics.frechet_distance(gt_obs, gen_obs))
      except ValueError as e:
        why["FDe"] = str(e)
      if out["FDe"] is None and "FDe" not in why:
        why["FDe"] = "the Fréchet distance is not finite"

  def summary(self) -> tuple[dict, dict, dict]:
    """(metrics, unavailable reasons, reference rows {"ground_truth", "vocoded_ground_truth"})."""
    out: dict[str, Optional[float]] = {k: None for k in METRIC_KEYS}
    why: dict[str, str] = {}
    n = len(self.per_clip)
    self._face_metrics(out, why)
    gen_head, gen_face = np.concatenate(self._gen_head), np.concatenate(self._gen_face)
    out["Div_h"] = finite_or_none(metrics.diversity(gen_head))
    out["Div_e"] = finite_or_none(metrics.diversity(gen_face))
    for k in ("BC_h", "BC_e"):
      out[k] = self._mean(k)
      if out[k] is None:
        why[k] = f"no audio onset in the generated speech of any of the {n} clip(s)"
    out["MCD"] = self._mean("MCD")
    if out["MCD"] is None:
      why["MCD"] = ("no clip has ground-truth audio of at least "
                    f"{metrics.MCD_N_FFT} samples (record field 'audio')")
    for k in ("face", "head"):
      out[f"Jitter_{k}"] = finite_or_none(self._jitter[k].ratio())
      if out[f"Jitter_{k}"] is None:
        why[f"Jitter_{k}"] = ("no clip has 3 consecutive (observed) frames at 30 fps, or the "
                              "ground truth does not move")
    if self.recognizer is None:
      why["WER"] = self.wer_missing
    elif not self._texts["ref"]:
      why["WER"] = ("no utterance (record field 'utterances') ends inside the evaluated "
                    "frames of any clip")
    else:
      out["WER"] = self._wer("gen")
    for k in METRIC_KEYS:
      if out[k] is None and k not in why:
        why[k] = "not finite"
    gt = {"Div_h": finite_or_none(metrics.diversity(np.concatenate(self._gt_head))),
          "Div_e": finite_or_none(metrics.diversity(np.concatenate(self._gt_face))),
          "WER": self._wer("gt")}
    for k in ("BC_h", "BC_e"):
      gt[k] = self._mean("gt_" + k)
    vocoded = {"WER": self._wer("vocoded"),
               "MCD": float(np.mean(self._vocoded_mcd)) if self._vocoded_mcd else None}
    return out, why, {"ground_truth": gt, "vocoded_ground_truth": vocoded}
