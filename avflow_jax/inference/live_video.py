"""The drawing of `preview_frames`, frame by frame as a stream produces them, as JPEG images.

The offline preview relates each clip's pose to the clip's own mean; a stream cannot wait for
that, so poses are drawn relative to the training data's mean pose (`PoseFrame.from_stats`).
An avatar without a face rig shows its codes' leading principal components, fitted once on the
first `pca_frames` frames of the stream and then fixed, so the bars keep their meaning.
"""

import io

import numpy as np

from avflow_jax.inference import preview_frames


class FramePainter:
  """Draws streamed 30 fps motion as the `sample` preview does, one JPEG per frame."""

  def __init__(self, head_mean, head_std, *, size: int = 256, quality: int = 80,
               pca_frames: int = 90):
    """Args:
      head_mean, head_std: the training data's head-pose statistics (7 or 4 values each).
      size: side of the square image in pixels (rounded up to even).
      quality: JPEG quality.
      pca_frames: frames of face codes the principal components are fitted on (no rig).
    """
    self.size = int(size) + int(size) % 2
    self.quality = int(quality)
    self._pose = preview_frames.PoseFrame.from_stats(head_mean, head_std)
    self._pca, self._codes_seen, self._pca_frames = None, [], int(pca_frames)

  def _codes_pca(self, codes: np.ndarray) -> preview_frames.CodePca:
    if self._pca is not None:
      return self._pca
    self._codes_seen.append(codes)
    seen = np.concatenate(self._codes_seen)
    pca = preview_frames.CodePca(seen)
    if len(seen) >= self._pca_frames:
      self._pca, self._codes_seen = pca, []
    return pca

  def paint(self, head, *, face_channels=None, face_codes=None) -> list[bytes]:
    """JPEG bytes of each frame.

    Args:
      head: (n, 7 | 4) head pose at 30 fps.
      face_channels: (n, 6) rig channels in [0, 1], or None.
      face_codes: (n, D) face codes, drawn as principal components when there is no rig.
    """
    head = np.asarray(head, np.float64)
    if head.shape[0] == 0:
      return []
    codes = None
    if face_channels is None:
      codes = np.asarray(face_codes, np.float64)
      pca = self._codes_pca(codes)
    else:
      pca = None
      face_channels = np.clip(np.asarray(face_channels, np.float64), 0.0, 1.0)
    panel = preview_frames.Panel(head, face_channels, codes, self._pose, pca, self.size, None)
    out = []
    for i in range(head.shape[0]):
      buf = io.BytesIO()
      panel.draw(i).save(buf, "JPEG", quality=self.quality)
      out.append(buf.getvalue())
    return out
