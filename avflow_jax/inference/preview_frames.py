"""The preview's frames: a stylised 2-D face (or pose axes + code PCA bars), drawn with numpy + PIL.

No GL and no face decoder: every face part is a polygon computed for all frames at once from the
rig channels (`face_rig.CHANNELS` order) and the head pose, then drawn frame by frame. Without
rig channels a panel shows the head's axes and the leading principal components of the face
codes. `render.render_preview` encodes these frames into an mp4; `live_video` draws them one by
one as a stream produces them.

Head pose: 7-d `[qw, qx, qy, qz, tx, ty, tz]` or 4-d (Audio2Photoreal neck/head angles, drawn as
pitch/yaw/roll(+pitch) Euler angles; approximate). Rotations and translations are shown relative
to the clip mean (the ground-truth clip's mean when `compare` is given) so a tracker's constant
camera offset does not turn the face away; translations are scaled so 3 std span ~15% of the
frame (y and z follow camera conventions: +y down, +z away from the camera).
"""

from typing import Any, Mapping

import numpy as np
from PIL import Image
from PIL import ImageDraw

_BG = (236, 238, 242)
_SKIN = (246, 210, 180)
_OUTLINE = (90, 60, 50)
_FEATURE = (40, 35, 35)
_LIP = (190, 80, 90)
_MOUTH = (90, 20, 35)
_AXES = ((220, 50, 50), (40, 160, 60), (50, 90, 220))
_HEAD_AXES = np.array([0.85, 1.1, 0.9])  # ellipsoid semi-axes (x right, y up, z to viewer)


# ------------------------------------------------------------------------------------------------
# Head pose -> per-frame rotation, offset, scale.
# ------------------------------------------------------------------------------------------------

def _quat_to_matrix(q: np.ndarray) -> np.ndarray:
  """(T, 4) [w, x, y, z] -> (T, 3, 3) rotation matrices (normalised first)."""
  q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
  w, x, y, z = np.moveaxis(q, -1, 0)
  return np.stack([
      np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
      np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
      np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
  ], -2)


def _euler_to_matrix(pitch, yaw, roll) -> np.ndarray:
  cx, sx, cy, sy, cz, sz = (np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw),
                            np.cos(roll), np.sin(roll))
  o, z = np.ones_like(pitch), np.zeros_like(pitch)
  rx = np.stack([np.stack([o, z, z], -1), np.stack([z, cx, -sx], -1),
                 np.stack([z, sx, cx], -1)], -2)
  ry = np.stack([np.stack([cy, z, sy], -1), np.stack([z, o, z], -1),
                 np.stack([-sy, z, cy], -1)], -2)
  rz = np.stack([np.stack([cz, -sz, z], -1), np.stack([sz, cz, z], -1),
                 np.stack([z, z, o], -1)], -2)
  return rz @ ry @ rx


def _mean_quat(q: np.ndarray) -> np.ndarray:
  """Principal eigenvector of sum q q^T: the sign-invariant average rotation."""
  q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), 1e-12)
  _, v = np.linalg.eigh(q.T @ q)
  return v[:, -1]


class PoseFrame:
  """Reference statistics shared by both panels (taken from the ground truth if any)."""

  def __init__(self, head: np.ndarray):
    if head.shape[1] == 7:
      self.rot0 = _quat_to_matrix(_mean_quat(head[:, :4])[None])[0]
      trans = head[:, 4:7]
    else:
      self.angles0 = head[:, :4].mean(0)
      trans = np.zeros((head.shape[0], 3))
    self.t0 = trans.mean(0)
    spread = float(np.sqrt(((trans - self.t0) ** 2).sum(-1).mean()))
    self._set_scale(spread)

  def _set_scale(self, spread: float) -> None:
    self.t_scale = 0.05 / spread if spread > 1e-8 else 0.0  # 3 std -> 0.15 of the frame

  @classmethod
  def from_stats(cls, mean: np.ndarray, std: np.ndarray) -> "PoseFrame":
    """The reference of a stream: the training data's mean pose and translation spread.

    A stream cannot wait for its clip's mean, and one chunk's spread would exaggerate the
    motion of a still listener.
    """
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    frame = cls(mean[None])
    if mean.size == 7:
      frame._set_scale(float(np.sqrt((std[4:7] ** 2).sum())))
    return frame

  def apply(self, head: np.ndarray):
    """Returns rotations (T, 3, 3) and offsets (T, 3) in frame units."""
    if head.shape[1] == 7:
      rot = np.einsum("ji,tjk->tik", self.rot0, _quat_to_matrix(head[:, :4]))
      trans = head[:, 4:7]
    else:
      a = head[:, :4] - self.angles0
      rot = _euler_to_matrix(a[:, 0] + a[:, 3], a[:, 1], a[:, 2])
      trans = np.zeros((head.shape[0], 3)) + self.t0
    return rot, (trans - self.t0) * self.t_scale


# ------------------------------------------------------------------------------------------------
# Geometry of the stylised face, vectorised over frames.
# ------------------------------------------------------------------------------------------------

def _on_face(uv: np.ndarray) -> np.ndarray:
  """(..., 2) face-plane points (x right, y up) -> (..., 3) points on the front of the head."""
  a, b, c = _HEAD_AXES
  r = 1.0 - (uv[..., 0] / a) ** 2 - (uv[..., 1] / b) ** 2
  return np.concatenate([uv, (c * np.sqrt(np.clip(r, 0.0, None)))[..., None]], -1)


def _ellipse_uv(center, w, h, n=14):
  """(T, n, 2) ellipses with per-frame centre (2,), half-width w (T,) and half-height h (T,)."""
  ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
  return np.stack([center[0] + w[:, None] * np.cos(ang), center[1] + h[:, None] * np.sin(ang)], -1)


def _mouth_uv(ch: np.ndarray, n: int = 9):
  """Outer (lips) and inner (opening) mouth polygons (T, 2n, 2) from rig channels."""
  jaw, closure, rnd, smile = ch[:, 0], ch[:, 1], ch[:, 2], ch[:, 3]
  half_w = 0.27 * (1 + 0.35 * smile - 0.45 * rnd)
  opening = 0.30 * jaw * (1 - closure)
  lift = 0.09 * smile - 0.02 * rnd
  xs = np.linspace(-1, 1, n)
  power = 1.0 - 0.5 * rnd  # rounder lips -> a more elliptical (p -> 0.5) opening
  shape = (1 - xs[None] ** 2) ** power[:, None]
  base = -0.48 + lift[:, None] * xs[None] ** 2
  x = half_w[:, None] * xs[None]
  def poly(up, down):
    upper = np.stack([x, base + up], -1)
    lower = np.stack([x[:, ::-1], (base - down)[:, ::-1]], -1)
    return np.concatenate([upper, lower], 1)
  inner = poly(0.35 * opening[:, None] * shape, 0.65 * opening[:, None] * shape)
  lip = 0.035 + 0.03 * rnd[:, None]
  outer = poly((0.35 * opening[:, None] + lip) * shape, (0.65 * opening[:, None] + lip) * shape)
  return outer, inner


def _silhouette(rot: np.ndarray, n: int = 40) -> np.ndarray:
  """(T, n, 2) outline of the rotated head ellipsoid under orthographic projection (exact)."""
  a_inv = np.diag(1.0 / _HEAD_AXES ** 2)
  q = rot @ a_inv @ np.swapaxes(rot, 1, 2)  # quadric of the rotated ellipsoid
  qxy = q[:, :2, :2] - q[:, :2, 2:] @ q[:, 2:, :2] / q[:, 2:, 2:]  # Schur complement: x-y outline
  w, v = np.linalg.eigh(qxy)
  ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
  circle = np.stack([np.cos(ang), np.sin(ang)], 0)  # (2, n)
  pts = v @ (circle[None] / np.sqrt(w)[:, :, None])
  return np.swapaxes(pts, 1, 2)


class _Projector:
  """Face units -> pixels for one panel: rotation, head offset and size per frame."""

  def __init__(self, rot, offset, size):
    self.rot = rot
    self.scale = 0.30 * size * np.clip(1.0 - 2.0 * offset[:, 2], 0.7, 1.3)
    self.cx = size * (0.5 + offset[:, 0])
    self.cy = size * (0.53 + offset[:, 1])

  def __call__(self, pts3: np.ndarray):
    """(T, n, 3) -> pixel coords (T, n, 2) and facing flag (T,) (feature centre z > 0)."""
    p = np.einsum("tij,tnj->tni", self.rot, pts3)
    xy = np.stack([self.cx[:, None] + self.scale[:, None] * p[..., 0],
                   self.cy[:, None] - self.scale[:, None] * p[..., 1]], -1)
    return xy.astype(np.float32), p[..., 2].mean(-1) > 0.05


def _face_layers(ch: np.ndarray, rot: np.ndarray, offset: np.ndarray, size: int):
  """Pixel polygons of every face part for all frames (dict of arrays)."""
  t = ch.shape[0]
  proj = _Projector(rot, offset, size)
  one = np.ones(t)
  blink, brow = ch[:, 5], ch[:, 4]
  out = {}
  outline = _silhouette(rot)
  out["head"] = np.stack([proj.cx[:, None] + proj.scale[:, None] * outline[..., 0],
                          proj.cy[:, None] - proj.scale[:, None] * outline[..., 1]], -1)
  for side, sx in (("l", -1), ("r", 1)):
    eye_h = np.maximum(0.075 * (1 - blink), 0.006)
    out[f"eye_{side}"] = proj(_on_face(_ellipse_uv((sx * 0.32, 0.18), 0.12 * one, eye_h)))
    pupil_r = np.minimum(0.045 * one, eye_h)
    out[f"pupil_{side}"] = proj(_on_face(_ellipse_uv((sx * 0.32, 0.17), pupil_r, pupil_r, 8)))
    inner_y, outer_y = 0.36 + 0.16 * brow, 0.33 + 0.12 * brow
    brow_uv = np.stack([np.stack([sx * 0.17 * one, inner_y], -1),
                        np.stack([sx * 0.32 * one, inner_y + 0.035], -1),
                        np.stack([sx * 0.47 * one, outer_y], -1)], 1)
    out[f"brow_{side}"] = proj(_on_face(brow_uv))
  nose = np.array([[0.0, 0.12], [0.0, -0.12], [0.07, -0.17], [0.0, -0.2]])
  out["nose"] = proj(_on_face(np.broadcast_to(nose, (t, 4, 2))) * np.array([1, 1, 1.12]))
  outer, inner = _mouth_uv(ch)
  out["lips"] = proj(_on_face(outer))
  out["mouth"] = proj(_on_face(inner))
  # A closed mouth has a zero-area opening, which PIL would still draw as a dark line.
  out["mouth_open"] = 0.30 * ch[:, 0] * (1 - ch[:, 1]) * proj.scale > 1.0
  return out


def _draw_face(draw: ImageDraw.ImageDraw, layers, i: int, line: int):
  draw.polygon(layers["head"][i].ravel().tolist(), fill=_SKIN, outline=_OUTLINE, width=line)
  for side in ("l", "r"):
    pts, vis = layers[f"eye_{side}"]
    if vis[i]:
      draw.polygon(pts[i].ravel().tolist(), fill=(255, 255, 255), outline=_FEATURE)
      p, _ = layers[f"pupil_{side}"]
      draw.polygon(p[i].ravel().tolist(), fill=_FEATURE)
    pts, vis = layers[f"brow_{side}"]
    if vis[i]:
      draw.line(pts[i].ravel().tolist(), fill=_FEATURE, width=line + 1)
  pts, vis = layers["nose"]
  if vis[i]:
    draw.line(pts[i].ravel().tolist(), fill=_OUTLINE, width=line)
  pts, vis = layers["lips"]
  if vis[i]:
    draw.polygon(pts[i].ravel().tolist(), fill=_LIP)
    if layers["mouth_open"][i]:
      draw.polygon(layers["mouth"][0][i].ravel().tolist(), fill=_MOUTH)


# ------------------------------------------------------------------------------------------------
# Without a face rig: head-pose axes + leading principal components of the codes.
# ------------------------------------------------------------------------------------------------

class CodePca:
  """Top-3 principal directions of a clip's codes, with per-component std for scaling."""

  def __init__(self, codes: np.ndarray, k: int = 3):
    self.mean = codes.mean(0)
    x = codes - self.mean
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    self.basis = vt[:k].T
    std = s[:k] / np.sqrt(max(codes.shape[0] - 1, 1))
    self.std = np.where(std > 1e-8, std, 1.0)

  def __call__(self, codes):
    z = (codes - self.mean) @ self.basis / self.std[: self.basis.shape[1]]
    return np.pad(z, ((0, 0), (0, 3 - z.shape[1])))


def _code_layers(codes_z: np.ndarray, rot, offset, size):
  t = codes_z.shape[0]
  proj = _Projector(rot, offset, size)
  proj.cy = proj.cy - 0.12 * size  # leave the lower band to the bars
  proj.scale = proj.scale * 0.8
  axes = np.concatenate([np.zeros((t, 1, 3)), np.broadcast_to(np.eye(3), (t, 3, 3))], 1)
  xy, _ = proj(axes)
  return {"axes": xy, "z": np.clip(codes_z / 3.0, -1, 1)}


def _draw_codes(draw: ImageDraw.ImageDraw, layers, i: int, size: int, line: int):
  axes = layers["axes"][i]
  c = axes[0]
  r = 0.06 * size
  draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=_SKIN, outline=_OUTLINE)
  for k in range(3):
    draw.line([c[0], c[1], axes[k + 1][0], axes[k + 1][1]], fill=_AXES[k], width=line + 1)
  # Bars of the 3 leading components (+- 3 std) and their last 2 s as curves.
  base_y, half_h = 0.84 * size, 0.12 * size
  z = layers["z"]
  draw.line([0.05 * size, base_y, 0.95 * size, base_y], fill=(150, 150, 150), width=1)
  hist = z[max(0, i - 60):i + 1]
  xs = np.linspace(0.05 * size, 0.62 * size, 61)[-hist.shape[0]:]
  for k in range(3):
    if hist.shape[0] > 1:
      pts = np.stack([xs, base_y - half_h * hist[:, k]], -1)
      draw.line(pts.ravel().tolist(), fill=_AXES[k], width=line)
    x0 = (0.70 + 0.09 * k) * size
    y1 = base_y - half_h * z[i, k]
    draw.rectangle([x0, min(base_y, y1), x0 + 0.06 * size, max(base_y, y1)], fill=_AXES[k])


# ------------------------------------------------------------------------------------------------
# Panels and frames.
# ------------------------------------------------------------------------------------------------

def _check(name, x, t=None, dims=None):
  x = np.asarray(x, np.float64)
  if x.ndim != 2:
    raise ValueError(f"render_preview: {name} must be (T, D), got shape {x.shape}")
  if dims is not None and x.shape[1] not in dims:
    raise ValueError(f"render_preview: {name} has {x.shape[1]} channels, expected one of {dims}")
  if t is not None and x.shape[0] != t:
    raise ValueError(f"render_preview: {name} has {x.shape[0]} frames, head_pose has {t}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"render_preview: {name} contains NaN or inf")
  return x


def _fit_length(x, t):
  """Trims or edge-holds (T', D) to t frames (a compared clip may differ in length)."""
  return x[:t] if x.shape[0] >= t else np.concatenate([x, np.repeat(x[-1:], t - x.shape[0], 0)])


class Panel:
  """One side of the preview: precomputed layers, drawn frame by frame."""

  def __init__(self, head, face_channels, face_codes, pose_ref, pca, size, title):
    self.size, self.title = size, title
    self.line = max(1, size // 128)
    rot, offset = pose_ref.apply(head)
    self.bg = Image.new("RGB", (size, size), _BG)
    if face_channels is not None:
      self.kind = "face"
      self.layers = _face_layers(np.clip(face_channels, 0, 1), rot, offset, size)
    else:
      self.kind = "codes"
      z = pca(face_codes) if pca is not None else np.zeros((head.shape[0], 3))
      self.layers = _code_layers(z, rot, offset, size)

  def draw(self, i: int) -> Image.Image:
    img = self.bg.copy()
    d = ImageDraw.Draw(img)
    if self.kind == "face":
      _draw_face(d, self.layers, i, self.line)
    else:
      _draw_codes(d, self.layers, i, self.size, self.line)
    if self.title:
      d.text((6, 4), self.title, fill=(20, 20, 20))
    return img


def make_panels(main: Mapping[str, Any], compare: Mapping[str, Any] | None,
                size: int) -> tuple[list[Panel], int]:
  """The panels of a preview, after checking its inputs.

  Args:
    main: `head_pose` (T, 4 | 7) and optionally `face_channels` (T, 6) or `face_codes` (T, D).
    compare: the same keys of a second clip (trimmed or edge-held to T frames), drawn first
      as "ground truth", whose pose (and codes, when it has them) set the reference of both
      panels; or None.
    size: panel side in pixels.

  Returns:
    (the panels, left to right; T, their number of frames).

  Raises:
    ValueError: (naming render_preview) an input of the wrong shape, NaN or inf, or no frames.
  """
  head = _check("head_pose", main["head_pose"], dims=(4, 7))
  t = head.shape[0]
  if t == 0:
    raise ValueError("render_preview: head_pose has no frames")
  sides = [("generated" if compare is not None else None, main, head)]
  if compare is not None:
    gt_head = _fit_length(_check("compare['head_pose']", compare["head_pose"], dims=(4, 7)), t)
    if gt_head.shape[1] != head.shape[1]:
      raise ValueError("render_preview: compare['head_pose'] and head_pose differ in width")
    sides.insert(0, ("ground truth", compare, gt_head))
  ref_side = sides[0]
  pose_ref = PoseFrame(ref_side[2])
  pca = None
  codes = {}
  for title, kw, h in sides:
    fc = kw.get("face_channels")
    if fc is None and kw.get("face_codes") is not None:
      c = _check(f"{title or 'face'} face_codes", kw["face_codes"])
      codes[title] = _fit_length(c, t)
  if codes:
    pca = CodePca(codes[ref_side[0]] if ref_side[0] in codes else next(iter(codes.values())))
  panels = []
  for title, kw, h in sides:
    fc = kw.get("face_channels")
    if fc is not None:
      fc = _fit_length(_check(f"{title or 'face'} face_channels", fc, dims=(6,)), t)
    panels.append(Panel(h, fc, codes.get(title), pose_ref, pca, size, title))
  return panels, t


def draw_frames(*, head_pose, face_channels=None, face_codes=None,
                compare: Mapping[str, Any] | None = None, size: int = 256) -> np.ndarray:
  """The frames `render.render_preview` would encode, as uint8 (T, size, size * panels, 3)."""
  main = {"head_pose": head_pose, "face_channels": face_channels, "face_codes": face_codes}
  panels, t = make_panels(main, compare, int(size) + int(size) % 2)
  return np.stack([draw_frame(panels, i) for i in range(t)])


def draw_frame(panels: list[Panel], i: int) -> np.ndarray:
  """Frame `i` of `panels` side by side, as uint8 (size, size * len(panels), 3)."""
  if len(panels) == 1:
    return np.asarray(panels[0].draw(i))
  return np.concatenate([np.asarray(p.draw(i)) for p in panels], axis=1)

