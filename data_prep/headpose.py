"""Rigid head transforms -> 7-d head vectors [qw, qx, qy, qz, tx, ty, tz]."""

import numpy as np

from avflow_jax.core.errors import BadInput


def rotation_to_quaternion(rot: np.ndarray) -> np.ndarray:
  """Unit quaternions [w, x, y, z] of rotation matrices (Shepperd's method, vectorised).

  Args:
    rot: (N, 3, 3) rotation matrices acting on column vectors (x' = R x). A uniform scale
      is tolerated (the quaternion is normalised).

  Returns:
    (N, 4) float64 unit quaternions, sign not yet made continuous.
  """
  r = np.asarray(rot, np.float64)
  r00, r01, r02 = r[:, 0, 0], r[:, 0, 1], r[:, 0, 2]
  r10, r11, r12 = r[:, 1, 0], r[:, 1, 1], r[:, 1, 2]
  r20, r21, r22 = r[:, 2, 0], r[:, 2, 1], r[:, 2, 2]
  trace = r00 + r11 + r22
  # Four algebraically equal formulas; each is accurate when its pivot is largest.
  pivots = np.stack([trace, r00, r11, r22], axis=-1)
  case = np.argmax(pivots, axis=-1)
  s = 2.0 * np.sqrt(np.maximum(1.0 + 2.0 * pivots - trace[:, None], 1e-12))
  cands = np.stack([
      np.stack([s[:, 0] / 4, (r21 - r12) / s[:, 0], (r02 - r20) / s[:, 0],
                (r10 - r01) / s[:, 0]], -1),
      np.stack([(r21 - r12) / s[:, 1], s[:, 1] / 4, (r01 + r10) / s[:, 1],
                (r02 + r20) / s[:, 1]], -1),
      np.stack([(r02 - r20) / s[:, 2], (r01 + r10) / s[:, 2], s[:, 2] / 4,
                (r12 + r21) / s[:, 2]], -1),
      np.stack([(r10 - r01) / s[:, 3], (r02 + r20) / s[:, 3], (r12 + r21) / s[:, 3],
                s[:, 3] / 4], -1),
  ], axis=1)
  q = cands[np.arange(r.shape[0]), case]
  return q / np.linalg.norm(q, axis=-1, keepdims=True)


def continuous_quaternions(q: np.ndarray) -> np.ndarray:
  """Flips quaternion signs so consecutive frames agree (q and -q are the same rotation).

  The first frame gets w >= 0; each later frame takes the sign closest to its predecessor,
  so linear interpolation between frames never crosses the antipode.
  """
  q = np.array(q, np.float64)
  if q.shape[0] == 0:
    return q
  dots = np.einsum("nd,nd->n", q[1:], q[:-1])
  flips = np.concatenate([[1.0], np.where(dots < 0, -1.0, 1.0)])
  sign = np.cumprod(flips)
  if q[0, 0] < 0:
    sign = -sign
  return q * sign[:, None]


def transforms_to_head(transforms: np.ndarray, path: str) -> np.ndarray:
  """(N, 3|4, 4) rigid transforms -> (N, 7) [qw, qx, qy, qz, tx, ty, tz] float64.

  Raises:
    BadInput: wrong shape, NaN/Inf, or a rotation part that is not a proper rotation.
  """
  t = np.asarray(transforms)
  if t.ndim != 3 or t.shape[1] not in (3, 4) or t.shape[2] != 4:
    raise BadInput(f"{path}: head transforms have shape {t.shape}, expected (N, 3|4, 4)",
                   "wrong shape")
  t = t.astype(np.float64)
  if not np.isfinite(t).all():
    raise BadInput(f"{path}: NaN/Inf in head transforms", "NaN/Inf")
  rot = t[:, :3, :3]
  det = np.linalg.det(rot)
  if t.shape[0] and (det <= 1e-6).any():
    bad = int(np.flatnonzero(det <= 1e-6)[0])
    raise BadInput(f"{path}: frame {bad} rotation has determinant {det[bad]:.3g} (not a "
                   "rotation)", "bad value")
  quat = continuous_quaternions(rotation_to_quaternion(rot))
  return np.concatenate([quat, t[:, :3, 3]], axis=-1)


def renormalise_quaternions(head: np.ndarray) -> np.ndarray:
  """Re-normalises the quaternion part (first 4 dims) after linear interpolation."""
  head = np.array(head, np.float32)
  norm = np.linalg.norm(head[:, :4], axis=-1, keepdims=True)
  head[:, :4] /= np.maximum(norm, 1e-8)
  return head
