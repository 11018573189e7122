"""Diagnostic plot of one sample: mel image, face-channel curves, head-pose curves (vs. GT)."""

from typing import Mapping, Sequence

import numpy as np

from avflow_jax.core import files

_HEAD7 = ("qw", "qx", "qy", "qz", "tx", "ty", "tz")
_MAX_FACE_CURVES = 8  # 256-d codes would be unreadable; the first few dims are enough to eyeball


def _as_2d(name: str, x) -> np.ndarray:
  x = np.asarray(x, np.float32)
  if x.ndim != 2:
    raise ValueError(f"plot_sample: {name} must be (T, D), got shape {x.shape}")
  return x


def plot_sample(out_png: str, *, mel, frame_rate: float, face=None,
                channel_names: Sequence[str] | None = None, head=None,
                gt: Mapping[str, np.ndarray] | None = None, title: str | None = None) -> None:
  """Writes a PNG with the generated sample, overlaid on the ground truth when given.

  Args:
    out_png: output path (written to a temporary name, then renamed).
    mel: (T, 80) log-mel of the sample.
    frame_rate: frames per second of every stream (86.13 on the mel grid).
    face: (T, K) face channels (rig channels or codes; at most 8 are drawn).
    channel_names: K names for the legend (default c0, c1, ...).
    head: (T, D) head pose.
    gt: optional dict with the same keys (`mel`, `face`, `head`) of the ground truth;
      curves are drawn dashed, a GT mel gets its own image row.
    title: figure title.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  gt = dict(gt or {})
  mel = _as_2d("mel", mel)
  rows = [("mel", "generated mel", mel)]
  if gt.get("mel") is not None:
    rows.insert(0, ("mel", "ground-truth mel", _as_2d("gt['mel']", gt["mel"])))
  if face is not None:
    rows.append(("curves", "face", _as_2d("face", face)))
  if head is not None:
    rows.append(("curves", "head pose", _as_2d("head", head)))
  fig, axes = plt.subplots(len(rows), 1, figsize=(12, 2.4 * len(rows)), squeeze=False,
                           constrained_layout=True)
  vmin = min(float(r[2].min()) for r in rows if r[0] == "mel")
  vmax = max(float(r[2].max()) for r in rows if r[0] == "mel")
  colors = plt.get_cmap("tab10").colors
  for ax, (kind, label, x) in zip(axes[:, 0], rows):
    seconds = x.shape[0] / frame_rate
    if kind == "mel":
      im = ax.imshow(x.T, origin="lower", aspect="auto", interpolation="nearest",
                     extent=(0, seconds, 0, x.shape[1]), vmin=vmin, vmax=vmax, cmap="magma")
      fig.colorbar(im, ax=ax, pad=0.01, label="log mel")
      ax.set_ylabel("mel band")
    else:
      key = "face" if label == "face" else "head"
      ref = gt.get(key)
      ref = None if ref is None else _as_2d(f"gt['{key}']", ref)
      k = min(x.shape[1], _MAX_FACE_CURVES) if key == "face" else x.shape[1]
      if key == "face":
        names = list(channel_names) if channel_names is not None else []
      else:
        names = list(_HEAD7) if x.shape[1] == 7 else []
      t = np.arange(x.shape[0]) / frame_rate
      for j in range(k):
        name = names[j] if j < len(names) else f"{'c' if key == 'face' else 'h'}{j}"
        c = colors[j % len(colors)]
        ax.plot(t, x[:, j], color=c, lw=1.2, label=name)
        if ref is not None and j < ref.shape[1]:
          ax.plot(np.arange(ref.shape[0]) / frame_rate, ref[:, j], color=c, lw=1.0, ls="--")
      suffix = f" (first {k} of {x.shape[1]})" if k < x.shape[1] else ""
      ax.set_ylabel(label + suffix)
      ax.legend(loc="upper right", fontsize=7, ncol=min(k, 8), framealpha=0.6)
      ax.set_xlim(0, seconds)
    ax.set_title(label + ("  (solid: generated, dashed: ground truth)"
                          if kind == "curves" and gt.get("face" if label == "face" else "head")
                          is not None else ""), fontsize=9, loc="left")
  axes[-1, 0].set_xlabel("time (s)")
  if title:
    fig.suptitle(title)
  try:
    with files.atomic_path(out_png) as tmp:
      fig.savefig(tmp, dpi=100, format="png")
  finally:
    plt.close(fig)
