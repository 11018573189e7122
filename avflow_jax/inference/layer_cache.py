"""Frame buffers of a stream, and one Euler step's network kept layer by layer.

The exact stream (`streaming.StreamingSampler`) evaluates the velocity network once per Euler
step on a sequence that grows at its end. Re-running the whole network over a chunk recomputes
ΣL + ΣR frames of context per chunk (192 frames for a 43-frame chunk of the paper's model: 5×
the work of the chunk itself). `CachedVelocity` keeps each layer's hidden states instead
(`models.layer_cut`) and computes a layer only for the frames whose window has become final:
layer l reaches R_l frames less far than layer l - 1, and sees L_l + R_l frames of context.
Every frame is computed from the same inputs as in one whole-sequence evaluation, so the result
is the same (to float rounding).
"""

from typing import Optional

import numpy as np


class Frames:
  """Frames [start, end) of one stream, appended at the end and dropped from the front."""

  def __init__(self, dim: int):
    self.start, self.data = 0, np.zeros((0, dim), np.float32)

  @property
  def end(self) -> int:
    return self.start + len(self.data)

  def append(self, x: np.ndarray) -> None:
    self.data = np.concatenate([self.data, np.asarray(x, np.float32)], 0)

  def get(self, a: int, b: int) -> np.ndarray:
    assert self.start <= a <= b <= self.end, (self.start, a, b, self.end)
    return self.data[a - self.start:b - self.start]

  def window(self, a: int, length: int) -> tuple[np.ndarray, int]:
    """Frames [a, a + length) padded with zeros past the end, and how many are real."""
    x = self.get(a, min(a + length, self.end))
    return np.pad(x, ((0, length - len(x)), (0, 0))), len(x)

  def drop_before(self, frame: int) -> None:
    frame = min(max(frame, self.start), self.end)
    self.data, self.start = self.data[frame - self.start:], frame


class CachedVelocity:
  """The velocity of one Euler step over a growing sequence, one layer at a time.

  `advance(x, cond, closed)` computes the velocity of every frame whose receptive field lies
  inside the frames of `x` (the step's state) and `cond` known so far (all frames once
  `closed`), and returns them. Memory is bounded: each layer keeps its left window of context
  plus the frames the next layer has not reached yet.
  """

  def __init__(self, layer_cut, params, t: float, chunk_frames: int):
    """Args:
      layer_cut: `models.layer_cut.cut(model)`.
      params: the model's parameters ("av" of a run).
      t: this step's flow time.
      chunk_frames: frames computed per call (one compiled shape per layer window).
    """
    self.cut, self.params, self.chunk = layer_cut, params, int(chunk_frames)
    self.t = np.float32(t)
    self._layer_params = [layer_cut.layer_params(params, i)
                          for i in range(len(layer_cut.windows))]
    self._hidden = [Frames(layer_cut.hidden_width) for _ in range(len(layer_cut.windows) + 1)]

  def buffered_frames(self) -> int:
    return sum(len(h.data) for h in self._hidden)

  def _per_frame(self, fn, a: int, b: int) -> np.ndarray:
    """fn(start) -> (1, chunk, .) for frames [a, b), in whole chunks (one compiled shape)."""
    return np.concatenate([np.asarray(fn(c))[0, :min(self.chunk, b - c)]
                           for c in range(a, b, self.chunk)])

  def advance(self, x: Frames, cond: Optional[Frames], closed: bool) -> np.ndarray:
    """The (n, V + A) velocity of the frames that became computable, after those returned."""
    h0 = self._hidden[0]
    n = 0 if cond is None else min(x.end, cond.end)
    if h0.end < n:  # Per frame: any chunking gives the same numbers.
      h0.append(self._per_frame(lambda c: self.cut.embed(
          self.params, x.window(c, self.chunk)[0][None], cond.window(c, self.chunk)[0][None]),
                                h0.end, n))
    for i, (left, right) in enumerate(self.cut.windows):
      src, dst = self._hidden[i], self._hidden[i + 1]
      target = src.end if closed else src.end - right
      while dst.end < target:
        a = dst.end
        s = max(0, a - left)
        hw, valid = src.window(s, self.chunk + left + right)
        out = self.cut.layer(i, self._layer_params[i], hw[None], self.t, np.int32(valid),
                             np.int32(a - s), self.chunk)
        dst.append(np.asarray(out)[0, :min(self.chunk, target - a)])
      src.drop_before(dst.end - left)  # The left context of its next window.
    last = self._hidden[-1]
    if last.end == last.start:
      return np.zeros((0, x.data.shape[1]), np.float32)
    v = self._per_frame(lambda c: self.cut.readout(
        self.params, last.window(c, self.chunk)[0][None]), last.start, last.end)
    last.drop_before(last.end)
    return v
