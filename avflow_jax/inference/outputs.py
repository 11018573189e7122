"""What a sample writes: NAME.wav, NAME.npz, NAME.mp4 and NAME.png, all or nothing.

Files are written into a hidden staging directory beside the output and moved into it only
when every sample succeeded (`Staging.commit`), so a failed run leaves nothing under the output
name.
"""

import os
import shutil
import tempfile
import time
from typing import Any, Optional

import numpy as np

from avflow_jax.core import constants as C
from avflow_jax.core import plots
from avflow_jax.core.errors import InputError
from avflow_jax.inference import render


class Staging:
  """A hidden directory next to (or inside) OUTPUT; `commit` moves its files into OUTPUT.

  Creating it up front is also the check that OUTPUT can be written.
  """

  def __init__(self, output: str, what: str = "output"):
    self.output = os.path.abspath(os.path.expanduser(output))
    if os.path.exists(self.output) and not os.path.isdir(self.output):
      raise InputError(f"{what} {output}: exists and is not a directory")
    anchor = self.output
    while not os.path.exists(anchor):
      anchor = os.path.dirname(anchor)
    if not os.path.isdir(anchor):
      raise InputError(f"{what} {output}: cannot be created ({anchor} is not a directory)")
    try:
      self.dir = tempfile.mkdtemp(prefix=f".{os.path.basename(self.output)}.",
                                  suffix=".partial", dir=anchor)
    except OSError as e:
      raise InputError(f"{what} {output}: cannot write in {anchor} ({e.strerror})") from e

  def path(self, name: str) -> str:
    return os.path.join(self.dir, name)

  def commit(self) -> list[str]:
    """Moves every staged file into OUTPUT; returns the final paths."""
    names = sorted(os.listdir(self.dir))
    mask = os.umask(0o022)
    os.umask(mask)
    if not os.path.exists(self.output):
      os.makedirs(os.path.dirname(self.output), exist_ok=True)
      os.chmod(self.dir, 0o777 & ~mask)  # mkdtemp made it private.
      os.rename(self.dir, self.output)
    else:
      for n in names:
        os.replace(os.path.join(self.dir, n), os.path.join(self.output, n))
      os.rmdir(self.dir)
    return [os.path.join(self.output, n) for n in names]

  def abort(self) -> None:
    shutil.rmtree(self.dir, ignore_errors=True)


def _write_wav(path: str, waveform: np.ndarray, sample_rate: int) -> None:
  import soundfile  # pylint: disable=g-import-not-at-top
  if np.abs(waveform).max(initial=0.0) > 1.0:  # Unclipped (official) audio: 16-bit would clip.
    soundfile.write(path, waveform, sample_rate, subtype="FLOAT", format="WAV")
    return
  soundfile.write(path, waveform, sample_rate, subtype="PCM_16", format="WAV")


def _write_npz(path: str, arrays: dict[str, Any]) -> None:
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def ground_truth(avatar, record: dict) -> dict[str, np.ndarray]:
  """The compared clip's streams at both rates (+ rig channels), like a generated sample."""
  return avatar.motion_outputs(np.asarray(record["mel"], np.float32),
                               np.asarray(record["face"], np.float32),
                               np.asarray(record["head"], np.float32))


def write_sample(staging: Staging, name: str, sample: dict, *, avatar, tokens: np.ndarray,
                 gt: Optional[dict], meta: dict, timings: dict) -> None:
  """Writes NAME.{wav,npz,mp4,png} of one sample into the staging directory."""
  t0 = time.perf_counter()
  _write_wav(staging.path(name + ".wav"), sample["waveform"], C.SAMPLE_RATE)
  arrays = {k: sample[k] for k in ("mel", "face", "head", "face_30fps", "head_30fps")}
  if "rig" in sample:
    arrays.update(rig=sample["rig"], rig_30fps=sample["rig_30fps"],
                  rig_channels=np.array(sample["rig_channels"]))
  arrays.update(tokens=tokens, sample_rate=np.int64(C.SAMPLE_RATE),
                frame_rate=np.float64(C.FRAME_RATE), fps=np.float64(C.VIDEO_FPS),
                **{k: np.asarray(v) for k, v in meta.items()})
  _write_npz(staging.path(name + ".npz"), arrays)
  timings["write"] = timings.get("write", 0.0) + time.perf_counter() - t0

  t0 = time.perf_counter()
  rig = "rig" in sample
  compare = None
  if gt is not None:
    compare = {"head_pose": gt["head_30fps"]}
    compare["face_channels" if rig else "face_codes"] = gt["rig_30fps" if rig else "face_30fps"]
  render.render_preview(
      staging.path(name + ".mp4"), head_pose=sample["head_30fps"], audio=sample["waveform"],
      sample_rate=C.SAMPLE_RATE, fps=C.VIDEO_FPS,
      face_channels=sample["rig_30fps"] if rig else None,
      face_codes=None if rig else sample["face_30fps"], compare=compare)
  timings["render"] = timings.get("render", 0.0) + time.perf_counter() - t0

  t0 = time.perf_counter()
  gt_plot = None
  if gt is not None:
    gt_plot = {"mel": gt["mel"], "face": gt["rig"] if rig else gt["face"], "head": gt["head"]}
  plots.plot_sample(staging.path(name + ".png"), mel=sample["mel"], frame_rate=C.FRAME_RATE,
                    face=sample["rig"] if rig else sample["face"],
                    channel_names=list(sample["rig_channels"]) if rig else None,
                    head=sample["head"], gt=gt_plot, title=name)
  timings["plot"] = timings.get("plot", 0.0) + time.perf_counter() - t0
