"""What the paper table says of each run beside its metrics: size, training and sampling time.

`run_summary` reads a run's files (variant, parameter count, seconds in training steps);
`sampling_time` times one sample of a loaded avatar (Table 2's inference time) on the machine
that `device_name` names.
"""

import json
import os
import platform
import time
from typing import Optional

import numpy as np

from avflow_jax.core import constants as C
from avflow_jax.core import run_dir
from avflow_jax.data import clips

TIMED_REPEATS = 3


def _train_seconds(d: str) -> Optional[float]:
  """Seconds spent in training steps: the logged intervals over their step rates (start-up,
  compilation, evaluations and checkpoints are not counted)."""
  path = os.path.join(d, "metrics.jsonl")
  if not os.path.isfile(path):
    return None
  total, last = 0.0, 0
  with open(path) as f:
    for line in f:
      m = json.loads(line)
      if m.get("steps_per_s") and "step" in m:
        total += (m["step"] - last) / m["steps_per_s"]
        last = m["step"]
  return total


def run_summary(workdir: str) -> dict:
  """Variant, parameter count, steps and training time of an AV run (from its files).

  Raises:
    InputError: the workdir has no readable config or checkpoint (named as --runs).
  """
  config = run_dir.read_run_config(workdir, "--runs")
  step, params = run_dir.load_params(workdir, "ema")
  import jax  # pylint: disable=g-import-not-at-top
  vae_dir = config.head_vae.get("workdir") or os.path.join(workdir, run_dir.HEAD_VAE_DIR)
  return {"variant": config.model.get("variant", "av_flow"), "step": int(step),
          "params": int(sum(np.size(x) for x in jax.tree.leaves(params))),
          "train_s": _train_seconds(workdir), "head_vae_train_s": _train_seconds(vae_dir),
          "model": {k: config.model.get(k) for k in ("d_model", "num_layers", "hidden_dim")}}


def device_name() -> str:
  """The machine the timing ran on, in words."""
  import jax  # pylint: disable=g-import-not-at-top
  dev = jax.devices()[0]
  if dev.platform == "cpu":
    model = platform.processor() or "cpu"
    try:
      with open("/proc/cpuinfo") as f:
        model = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
    except (OSError, StopIteration):
      pass
    return f"CPU, {os.cpu_count()} cores ({model})"
  return f"{jax.device_count()} × {dev.device_kind} ({dev.platform})"


def _median_time(fn) -> float:
  """Median wall time of `fn()` over TIMED_REPEATS calls, after one to compile and warm up."""
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn())
  times = []
  for _ in range(TIMED_REPEATS):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def sampling_time(avatar, split: str, num_steps: int, seconds: float) -> dict:
  """Median wall time of one `seconds`-long sample (`num_steps` Euler steps; compile excluded).

  Args:
    avatar: the loaded `inference.avatar.Avatar` (with the vocoder to time).
    split: manifest split whose first clip's tokens (tiled to length) drive the sample.
    num_steps: Euler steps of the sampler.
    seconds: length of the sample.

  Returns:
    {"seconds", "num_steps", "repeats", "sample_s", "vocoder_s"}, and for the cascaded variant
    "stages_s": {"audio", "visual"}, the two stages timed on their own.
  """
  from avflow_jax.models import dit  # pylint: disable=g-import-not-at-top
  loaded = avatar.loaded
  shards, entries = clips.split_entries(loaded.data_dir, loaded.manifest, split)
  _, record = next(clips.iter_split_records(shards, entries[:1],
                                            clips.page_frames(loaded.manifest)))
  n = int(round(seconds * C.FRAME_RATE))
  reps = -(-n // record["tokens"].shape[0])
  tokens = np.tile(np.asarray(record["tokens"], np.float32), (reps, 1))[:n]
  part = None
  if loaded.uses_participant:
    part = np.tile(np.asarray(record["participant"], np.float32), (reps, 1))[:n]

  out = {"seconds": seconds, "num_steps": num_steps, "repeats": TIMED_REPEATS,
         "sample_s": _median_time(lambda: avatar.sample_motion(tokens, num_steps=num_steps,
                                                               participant=part)["mel"])}
  mel = avatar.sample_motion(tokens, num_steps=num_steps, participant=part)["mel"][0]
  out["vocoder_s"] = _median_time(lambda: avatar.vocode(mel))
  if dit.is_cascaded(loaded.model):
    out["stages_s"] = _stage_times(loaded, tokens, part, num_steps)
  return out


def _stage_times(loaded, tokens: np.ndarray, part: Optional[np.ndarray],
                 num_steps: int) -> dict:
  """{"audio", "visual"}: median times of the cascaded variant's two stages on their own."""
  import jax  # pylint: disable=g-import-not-at-top

  from avflow_jax.inference import sampling  # pylint: disable=g-import-not-at-top
  model, params = loaded.model, loaded.params
  n = tokens.shape[0]
  cond = sampling.condition(params["stats"], jax.numpy.asarray(tokens[None]),
                            None if part is None else jax.numpy.asarray(part[None]))
  x0 = jax.random.normal(jax.random.PRNGKey(0), (1, n, model.visual_dim + model.audio_dim))
  stage1 = jax.jit(lambda c, x: sampling.solve_audio_stage(model, params["av"], c, x,
                                                           num_steps))
  stage2 = jax.jit(lambda c, m, x: sampling.solve_visual_stage(model, params["av"], c, m, x,
                                                               num_steps))
  gen_mel = stage1(cond, x0[..., model.visual_dim:])
  return {"audio": _median_time(lambda: stage1(cond, x0[..., model.visual_dim:])),
          "visual": _median_time(lambda: stage2(cond, gen_mel, x0[..., :model.visual_dim]))}
