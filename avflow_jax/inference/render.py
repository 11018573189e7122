"""Preview video: the frames of `preview_frames` at 30 fps, encoded and muxed with audio.

`render_preview` draws every frame (`preview_frames`: a stylised 2-D face, or pose axes + code
PCA bars) and pipes the raw RGB frames into the ffmpeg binary shipped with imageio-ffmpeg
(libx264 yuv420p + AAC audio). The mp4 is written under a temporary name in the output
directory and renamed on success, so a failed render never leaves a partial file under the
requested name.
"""

import os
import subprocess
import tempfile
import time
from typing import Any, Mapping

from absl import logging
import numpy as np

from avflow_jax.core import face_rig
from avflow_jax.core import files
from avflow_jax.inference import preview_frames

RIG_CHANNELS = face_rig.CHANNELS


def _write_wav(path, audio, sample_rate, num_samples):
  import soundfile  # pylint: disable=g-import-not-at-top
  a = np.asarray(audio)
  if a.ndim != 1:
    raise ValueError(f"render_preview: audio must be mono (N,), got shape {a.shape}")
  a = a / 32768.0 if np.issubdtype(a.dtype, np.integer) else a.astype(np.float64)
  a = np.nan_to_num(a)[:num_samples]
  a = np.pad(a, (0, num_samples - a.size))
  soundfile.write(path, np.clip(a, -1, 1), int(sample_rate), subtype="PCM_16")



def render_preview(out_mp4: str, *, head_pose, audio=None, sample_rate: int = 22050,
                   fps: float = 30.0, face_channels=None, face_codes=None,
                   compare: Mapping[str, Any] | None = None, size: int = 256) -> dict:
  """Renders a preview video of one clip (optionally side by side with the ground truth).

  Args:
    out_mp4: output path (.mp4), replaced atomically.
    head_pose: (T, 7) `[qw, qx, qy, qz, tx, ty, tz]` or (T, 4) at `fps`.
    audio: (N,) mono waveform (float in [-1, 1] or int16) or None for a silent video; trimmed or
      zero-padded to the video duration.
    sample_rate: audio rate in Hz.
    fps: frame rate of the per-frame inputs and of the video.
    face_channels: (T, 6) rig channels in [0, 1] (`RIG_CHANNELS` order) -> stylised face.
    face_codes: (T, D) face codes, used when there are no rig channels -> pose axes + PCA bars.
    compare: same keys (`head_pose`, `face_channels`, `face_codes`) of a second clip, drawn on
      the left as "ground truth" (the main clip is on the right as "generated").
    size: panel side in pixels (rounded up to even).

  Returns:
    {"frames": T, "seconds": encode wall time, "draw_fps": frames drawn per second}.
  """
  import imageio_ffmpeg  # pylint: disable=g-import-not-at-top
  size = int(size) + int(size) % 2
  main = {"head_pose": head_pose, "face_channels": face_channels, "face_codes": face_codes}
  panels, t = preview_frames.make_panels(main, compare, size)
  width = size * len(panels)
  with files.atomic_path(out_mp4) as tmp_mp4, tempfile.TemporaryDirectory() as tmp_dir:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "rawvideo",
           "-pix_fmt", "rgb24", "-s", f"{width}x{size}", "-r", f"{fps}", "-i", "pipe:0"]
    if audio is not None:
      wav = os.path.join(tmp_dir, "audio.wav")
      _write_wav(wav, audio, sample_rate, int(round(t / fps * sample_rate)))
      cmd += ["-i", wav, "-map", "0:v:0", "-map", "1:a:0", "-c:a", "aac", "-b:a", "128k"]
    cmd += ["-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-pix_fmt", "yuv420p",
            "-movflags", "+faststart", "-f", "mp4", tmp_mp4]
    err_path = os.path.join(tmp_dir, "ffmpeg.log")
    start = time.perf_counter()
    draw_time = 0.0
    with open(err_path, "wb") as err:
      proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=err)
      try:
        for i in range(t):
          d0 = time.perf_counter()
          frame = preview_frames.draw_frame(panels, i)
          draw_time += time.perf_counter() - d0
          proc.stdin.write(frame.tobytes())
        proc.stdin.close()
      except BrokenPipeError:
        pass  # ffmpeg died; its log says why (below)
      rc = proc.wait()
    if rc != 0:
      with open(err_path, "rb") as f:
        msg = f.read().decode(errors="replace")[-2000:]
      raise RuntimeError(f"render_preview: ffmpeg failed for {out_mp4} (exit {rc}): {msg}")
  seconds = time.perf_counter() - start
  stats = {"frames": t, "seconds": seconds, "draw_fps": t / max(draw_time, 1e-9)}
  logging.info("render_preview: %s, %d frames in %.2fs (drawing %.0f frames/s)", out_mp4, t,
               seconds, stats["draw_fps"])
  return stats
