"""Lip-closure scores of text-driven clips: per-sentence and per-clip rows, the pooled metrics.

`LipScores.add` scores one clip as it arrives: the lip closures of the avatar driven from text
(shown on the ground-truth time axis) and from the recorded tokens against the recorded ones,
per sentence and over the whole clip; `summary` pools the frames of every clip into the
metrics of `evaluate_text` (F1 of lip-closure frames, token agreement, duration ratio).
"""

from typing import Any, Optional

import numpy as np

from avflow_jax.core import face_rig as face_rig_lib
from avflow_jax.evaluation import metrics

PLOTTED_UTTERANCES = 4  # Sentences whose lip-closure curves are kept for the plot.
_PLOT_MARGIN = 20  # Frames of the pause around a plotted sentence.


class _PooledEvents:
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


class LipScores:
  """Lip-closure scores over a stream of text-driven clips.

  Attributes:
    utterances: one row per scored sentence (clip, text, span, seen, lengths, F1s, agreement).
    clips: one row per clip (frames, speech and closure counts, F1s).
    plotted: lip-closure curves of the first `PLOTTED_UTTERANCES` sentences, for the plot.
  """

  def __init__(self, rig: face_rig_lib.FaceRig, seen: set):
    """`rig` decodes face codes into channels; `seen`: text keys the text model trained on."""
    self.rig, self.seen = rig, seen
    self.events = _PooledEvents()
    self.utterances: list[dict] = []
    self.clips: list[dict] = []
    self.plotted: list[dict] = []
    self._lip = face_rig_lib.CHANNELS.index("lip_closure")

  def add(self, name: str, record: dict, utts: list, driven: dict, from_text: np.ndarray,
          from_gt: np.ndarray) -> dict[str, Any]:
    """Scores one clip; returns its row.

    Args:
      name: the clip's name.
      record: its decoded record ("tokens", "face", optional "face_mask").
      utts: its speakable [(text, start, end)], sorted.
      driven: `text_alignment.text_driven_clip` of the clip.
      from_text: face codes sampled from the text-driven tokens (text-driven time axis).
      from_gt: face codes sampled from the recorded tokens.
    """
    gt_face = np.asarray(record["face"], np.float32)
    n = gt_face.shape[0]
    mask = record.get("face_mask")
    obs = np.ones((n,), bool) if mask is None else np.asarray(mask)[:n] > 0.5
    channels = {"gt": self.rig.decode(gt_face),
                "text": self.rig.decode(from_text)[driven["gen_of_gt"]],
                "gt_tokens": self.rig.decode(from_gt)}
    closed = {k: face_rig_lib.closure(v) for k, v in channels.items()}
    gt_tokens = np.asarray(record["tokens"], np.float32)
    speech = np.zeros((n,), bool)
    for k, (text, s, e) in enumerate(utts):
      speech[s:e] = True
      self._add_utterance(name, text, s, e, obs, closed, driven["utterances"][k],
                          driven["gen_of_gt"], gt_tokens)
      if len(self.plotted) < PLOTTED_UTTERANCES:
        a, b = max(s - _PLOT_MARGIN, 0), min(e + _PLOT_MARGIN, n)
        self.plotted.append({"title": f"{name} [{s}:{e}] {text}", "start": a,
                             **{k: v[a:b, self._lip] for k, v in channels.items()}})
    self.events.add("clip", closed["gt"][obs], closed["text"][obs])
    self.events.add("clip_gt_tokens", closed["gt"][obs], closed["gt_tokens"][obs])
    self.clips.append({"clip": name, "frames": n, "speech_frames": int(speech.sum()),
                       "gt_closed_frames": int(closed["gt"][obs].sum()),
                       "gt_closed_speech_frames": int(closed["gt"][obs & speech].sum()),
                       "text_driven_frames": int(len(driven["tokens"])),
                       "F1_lips": metrics.f1_binary(closed["gt"][obs], closed["text"][obs]),
                       "F1_lips_gt_tokens": metrics.f1_binary(closed["gt"][obs],
                                                              closed["gt_tokens"][obs])})
    return self.clips[-1]

  def _add_utterance(self, name: str, text: str, s: int, e: int, obs: np.ndarray,
                     closed: dict, utt: dict, gen_of_gt: np.ndarray,
                     gt_tokens: np.ndarray) -> None:
    """Pools and scores the sentence `text` at ground-truth frames [s, e) of clip `name`."""
    from avflow_jax.data import utterances  # pylint: disable=g-import-not-at-top
    o = obs[s:e]
    g = closed["gt"][s:e][o]
    self.events.add("speech", g, closed["text"][s:e][o])
    self.events.add("speech_gt_tokens", g, closed["gt_tokens"][s:e][o])
    is_seen = "*" in self.seen or utterances.text_key(text) in self.seen
    if not is_seen:
      self.events.add("speech_unseen", g, closed["text"][s:e][o])
    pred = utt["pred"]
    agree = np.mean(np.argmax(pred[gen_of_gt[s:e] - utt["gen_start"]], -1)
                    == np.argmax(gt_tokens[s:e], -1))
    self.utterances.append({
        "clip": name, "text": text, "start": s, "end": e, "seen": is_seen,
        "gt_frames": e - s, "pred_frames": int(len(pred)),
        "F1_lips": metrics.f1_binary(g, closed["text"][s:e][o]),
        "F1_lips_gt_tokens": metrics.f1_binary(g, closed["gt_tokens"][s:e][o]),
        "token_agreement": float(agree)})

  def summary(self) -> dict[str, Optional[float]]:
    """The pooled metrics (see `text_scoring`); needs at least one scored sentence."""
    rows, clip_rows, events = self.utterances, self.clips, self.events
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
    return values
