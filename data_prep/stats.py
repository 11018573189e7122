"""Streaming per-dim mean / std (float64 sums), merged over the train split only."""

from typing import Mapping, Optional

import numpy as np

STD_FLOOR = 1e-5


def clip_sums(x: np.ndarray, weight: Optional[np.ndarray] = None) -> dict:
  """Sufficient statistics of one clip's stream.

  Args:
    x: (T, D) values.
    weight: optional (T,) per-frame weight (the face mask: missing frames do not count).

  Returns:
    {"count": float, "sum": (D,) float64, "sumsq": (D,) float64}.
  """
  x = np.asarray(x, np.float64)
  if weight is None:
    return {"count": float(x.shape[0]), "sum": x.sum(0), "sumsq": (x * x).sum(0)}
  w = np.asarray(weight, np.float64)[:, None]
  return {"count": float(w.sum()), "sum": (w * x).sum(0), "sumsq": (w * x * x).sum(0)}


class RunningStats:
  """Accumulates `clip_sums` dicts per stream; `finalize` gives the manifest's stats."""

  def __init__(self):
    self._acc = {}

  def add(self, sums: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    for stream, s in sums.items():
      acc = self._acc.setdefault(stream, {"count": 0.0, "sum": 0.0, "sumsq": 0.0})
      acc["count"] += float(s["count"])
      acc["sum"] = acc["sum"] + np.asarray(s["sum"], np.float64)
      acc["sumsq"] = acc["sumsq"] + np.asarray(s["sumsq"], np.float64)

  def finalize(self) -> dict:
    """{stream: {"mean": [D floats], "std": [D floats]}}; std floored at 1e-5."""
    out = {}
    for stream, acc in sorted(self._acc.items()):
      n = max(acc["count"], 1.0)
      mean = np.asarray(acc["sum"], np.float64) / n
      var = np.maximum(np.asarray(acc["sumsq"], np.float64) / n - mean * mean, 0.0)
      out[stream] = {"mean": mean.tolist(),
                     "std": np.maximum(np.sqrt(var), STD_FLOOR).tolist()}
    return out
