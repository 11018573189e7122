"""Preview renderer (mp4 with audio) and sample plots."""

import os
import subprocess

import imageio_ffmpeg
import numpy as np
from PIL import Image
import pytest

from avflow_jax.core import plots
from avflow_jax.inference import preview_frames
from avflow_jax.inference import render

SR = 22050
FPS = 30


def _clip(t=60, seed=0):
  rng = np.random.RandomState(seed)
  s = np.arange(t) / FPS
  ang = 0.3 * np.sin(2 * np.pi * 0.5 * s)
  axis = np.array([0.2, 1.0, 0.1]) / np.linalg.norm([0.2, 1.0, 0.1])
  quat = np.concatenate([np.cos(ang / 2)[:, None], np.sin(ang / 2)[:, None] * axis], 1)
  trans = np.stack([0.02 * np.sin(s), 0.01 * np.cos(2 * s), 0.6 + 0.01 * np.sin(3 * s)], 1)
  channels = rng.uniform(0, 1, (t, 6))
  codes = rng.normal(size=(t, 256)).cumsum(0) * 0.1
  audio = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(t / FPS * SR)) / SR)
  return dict(head_pose=np.concatenate([quat, trans], 1), face_channels=channels,
              face_codes=codes, audio=audio.astype(np.float32))


def _probe(path):
  """(frames decoded, width, height, has audio stream)."""
  gen = imageio_ffmpeg.read_frames(path)
  meta = next(gen)
  n = sum(1 for _ in gen)
  info = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", path],
                        capture_output=True, text=True, check=False).stderr
  return n, meta["size"], "Audio:" in info


def test_render_face_rig_mp4(tmp_path):
  c = _clip()
  out = tmp_path / "preview.mp4"
  stats = render.render_preview(str(out), head_pose=c["head_pose"], audio=c["audio"],
                                sample_rate=SR, face_channels=c["face_channels"])
  n, size, has_audio = _probe(str(out))
  assert abs(n - 60) <= 1 and size == (256, 256) and has_audio
  assert os.listdir(tmp_path) == ["preview.mp4"]  # no temporaries left behind
  print(f"renderer: drawing {stats['draw_fps']:.0f} frames/s, "
        f"{stats['frames'] / stats['seconds']:.0f} frames/s including x264 encoding")
  assert stats["draw_fps"] > 100  # measured ~3000 (target >= 200); slack for a loaded box


def test_render_compare_codes_int16_audio(tmp_path):
  gt, gen = _clip(45, seed=1), _clip(40, seed=2)  # generated clip shorter: GT is trimmed/held
  out = tmp_path / "cmp.mp4"
  audio16 = (gen["audio"] * 32767).astype(np.int16)
  render.render_preview(str(out), head_pose=gen["head_pose"], audio=audio16, sample_rate=SR,
                        face_codes=gen["face_codes"],
                        compare=dict(head_pose=gt["head_pose"], face_codes=gt["face_codes"]))
  n, size, has_audio = _probe(str(out))
  assert abs(n - 40) <= 1 and size == (512, 256) and has_audio


def _pixels(frame, color, tol=12):
  return int((np.abs(frame.astype(int) - np.array(color)).max(-1) <= tol).sum())


def test_face_drawing_follows_channels_and_pose():
  t = 4
  head = np.tile([1.0, 0, 0, 0, 0, 0, 0], (t, 1))
  head[1:, 4] = [0.0, 0.0, 1.0]  # frame 3 moves right (+x); frames 0-2 at the origin
  ch = np.zeros((t, 6))
  ch[0] = [1.0, 0.0, 0.5, 0.0, 0.0, 0.0]  # jaw open, lips apart
  ch[1] = [1.0, 1.0, 0.5, 0.0, 0.0, 0.0]  # jaw open but lips closed -> no opening
  ch[2] = [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]  # eyes shut
  frames = preview_frames.draw_frames(head_pose=head, face_channels=ch, size=256)
  assert frames.shape == (t, 256, 256, 3) and frames.dtype == np.uint8
  mouth = [_pixels(f, preview_frames._MOUTH) for f in frames]  # pylint: disable=protected-access
  assert mouth[0] > 300 and mouth[1] == 0
  white = [_pixels(f, (255, 255, 255), 2) for f in frames]
  assert white[1] > 120 and white[2] < white[1] // 5
  skin = [np.argwhere(np.abs(f.astype(int) - preview_frames._SKIN).max(-1) < 6)  # pylint: disable=protected-access
          for f in frames]
  assert skin[3][:, 1].mean() > skin[2][:, 1].mean() + 10  # translated to the right


def test_render_failure_leaves_nothing(tmp_path, monkeypatch):
  c = _clip(10)
  out = tmp_path / "x.mp4"
  with pytest.raises(ValueError, match="face_channels"):
    render.render_preview(str(out), head_pose=c["head_pose"], audio=c["audio"],
                          face_channels=c["face_channels"][:, :5])
  monkeypatch.setattr(imageio_ffmpeg, "get_ffmpeg_exe", lambda: "/bin/false")
  with pytest.raises(RuntimeError, match="ffmpeg failed"):
    render.render_preview(str(out), head_pose=c["head_pose"], audio=c["audio"],
                          face_channels=c["face_channels"])
  assert os.listdir(tmp_path) == []


def test_plot_sample(tmp_path):
  rng = np.random.RandomState(0)
  t = 200
  out = tmp_path / "sample.png"
  plots.plot_sample(str(out), mel=rng.normal(-5, 2, (t, 80)), frame_rate=86.1328125,
                    face=rng.uniform(size=(t, 6)), channel_names=render.RIG_CHANNELS,
                    head=rng.normal(size=(t, 7)),
                    gt=dict(mel=rng.normal(-5, 2, (t, 80)), face=rng.uniform(size=(t, 6)),
                            head=rng.normal(size=(t, 7))), title="clip 0")
  with Image.open(out) as im:
    assert im.format == "PNG" and im.size[0] >= 800 and im.size[1] >= 600
  assert os.listdir(tmp_path) == ["sample.png"]
  with pytest.raises(ValueError, match="mel"):
    plots.plot_sample(str(tmp_path / "bad.png"), mel=np.zeros(10), frame_rate=86.0)
