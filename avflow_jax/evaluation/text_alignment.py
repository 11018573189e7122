"""Puts tokens predicted from text on a recording's time axis, for `evaluate_text`.

`dtw_align` matches predicted to recorded token frames of one sentence by dynamic time warping
(z-normalised logits, Euclidean cost: the face is never looked at); `text_driven_clip` builds a
whole clip's text-driven token sequence (each sentence predicted from its text, each pause a
fixed pause frame of its recorded length) and the frame maps between it and the recording.
"""

import numpy as np

from avflow_jax.core import constants as C


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
