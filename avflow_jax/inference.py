"""Loading a trained avatar (AV model + head-pose VAE + data statistics) for sampling.

A training workdir holds everything needed except the data statistics and the face rig, which
live next to the shards: WORKDIR/config.json names the shard directory (`data.dir`, whose
manifest.json carries `stats`, `dims` and `face_decoder`) and the head-VAE workdir
(`head_vae.workdir`). Every failure names the path involved and how to fix it.
"""

import dataclasses
import json
import os
from typing import Any, Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avflow_jax import checkpointing
from avflow_jax import input_pipeline
from avflow_jax import records

RUN_CONFIG = "config.json"  # Written by train.save_run_config.


class AvatarError(ValueError):
  """A trained avatar (or an input to it) is unusable; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class LoadedAvatar:
  """A trained avatar, ready for `sampling.sample`.

  Attributes:
    workdir: the AV training workdir (absolute).
    step: training step of the loaded checkpoint.
    which: "ema" or "params".
    config: the run's ConfigDict (WORKDIR/config.json).
    data_dir: the shard directory whose manifest was used.
    manifest: that manifest.
    model: the AVFlowTransformer.
    head_vae: the HeadVAE module.
    params: {"av": ..., "head_vae": ..., "stats": {stream: (mean, std)}} on one device.
    face_rig: the demo face rig (`manifest["face_decoder"]`), or None.
  """
  workdir: str
  step: int
  which: str
  config: Any
  data_dir: str
  manifest: dict
  model: nn.Module
  head_vae: nn.Module
  params: dict
  face_rig: Optional[Any] = None

  @property
  def dims(self) -> dict:
    return self.manifest["dims"]

  @property
  def uses_participant(self) -> bool:
    return bool(self.config.data.get("participant", False))


def read_run_config(workdir: str, what: str = "workdir"):
  """WORKDIR/config.json as a ConfigDict; AvatarError naming the file (`what` names the flag)."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(workdir, RUN_CONFIG)
  if not os.path.isdir(workdir):
    raise AvatarError(f"{what} {workdir}: no such directory")
  if not os.path.exists(path):
    raise AvatarError(f"{path}: missing; {workdir} is not a training workdir (train one with "
                      "`python -m avflow_jax.train --workdir ...`)")
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(json.load(f))
  except (OSError, json.JSONDecodeError) as e:
    raise AvatarError(f"{path}: unreadable run config ({e})") from e


def load_tree(workdir: str, which: str, what: str):
  """(step, params) of a workdir's latest checkpoint; AvatarError prefixed with `what`."""
  try:
    return checkpointing.load_params(workdir, which=which)
  except FileNotFoundError as e:
    raise AvatarError(f"{what}: {e}") from e
  except KeyError as e:
    raise AvatarError(f"{what}: {e.args[0]}") from e
  except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise AvatarError(f"{what}: cannot read the checkpoint under {workdir}/checkpoints "
                      f"({msg[:300]})") from e


def _resolve_data_dir(workdir: str, config, data_dir: Optional[str]) -> str:
  if data_dir:
    path = os.path.abspath(os.path.expanduser(data_dir))
    if not os.path.exists(os.path.join(path, "manifest.json")):
      raise AvatarError(f"{path}/manifest.json: missing (data_dir override is not a shard "
                        "directory)")
    return path
  stored = config.data.get("dir")
  if not stored:
    raise AvatarError(f"{workdir}/{RUN_CONFIG}: data.dir is empty (the run's shard directory "
                      "is unknown); pass the shard directory explicitly (--data-dir)")
  path = os.path.abspath(os.path.expanduser(stored))
  if not os.path.exists(os.path.join(path, "manifest.json")):
    raise AvatarError(
        f"{path}/manifest.json: missing (the data dir recorded in {workdir}/{RUN_CONFIG} has "
        "moved or been deleted; its manifest holds the normalisation stats). Fix: pass the "
        f"shard directory with --data-dir (data_dir=...), or edit data.dir in {RUN_CONFIG}")
  return path


def _resolve_vae_dir(workdir: str, config) -> str:
  stored = config.head_vae.get("workdir")
  candidates = [os.path.abspath(os.path.expanduser(stored))] if stored else []
  # The automatic VAE lives in WORKDIR/head_vae: still found after the workdir was moved.
  candidates.append(os.path.join(workdir, "head_vae"))
  for c in candidates:
    if os.path.isdir(os.path.join(c, "checkpoints")):
      return c
  raise AvatarError(
      f"head-pose VAE checkpoints not found (looked in {', '.join(candidates)}); "
      f"set head_vae.workdir in {workdir}/{RUN_CONFIG} to the VAE's training workdir")


def _vae_config(vae_dir: str, config):
  """The VAE's own run config if it has one, else the one train.py derives from the AV run."""
  if os.path.exists(os.path.join(vae_dir, RUN_CONFIG)):
    c = read_run_config(vae_dir, "head-VAE workdir")
    if "vae" in c:
      return c
  from avflow_jax import train  # pylint: disable=g-import-not-at-top
  return train.head_vae_config(config)


def _check_shape(what: str, got, expected, fix: str):
  if tuple(got) != tuple(expected):
    raise AvatarError(f"{what}: checkpoint has shape {tuple(got)}, the model built from the "
                      f"run config expects {tuple(expected)}; {fix}")


def load_face_rig(data_dir: str, manifest: dict):
  """The demo face rig named by `manifest["face_decoder"]` (relative to data_dir), or None."""
  rel = manifest.get("face_decoder")
  if not rel:
    return None
  from avflow_jax import face_rig  # pylint: disable=g-import-not-at-top
  path = rel if os.path.isabs(rel) else os.path.join(data_dir, rel)
  if not os.path.exists(path):
    raise AvatarError(f"{path}: missing (manifest.json face_decoder of {data_dir})")
  try:
    return face_rig.FaceRig.load(path)
  except ValueError as e:
    raise AvatarError(str(e)) from e


def load_avatar(workdir: str, which: str = "ema", data_dir: Optional[str] = None,
                device=None) -> LoadedAvatar:
  """Loads the latest checkpoint of an AV training workdir for sampling.

  Args:
    workdir: the AV run's workdir (holds config.json and checkpoints/).
    which: "ema" (the averaged weights, for sampling) or "params" (the raw weights).
    data_dir: shard directory to take the manifest from, overriding the recorded data.dir
      (use it when the data moved).
    device: where the params go (default: the first local device).

  Returns:
    A LoadedAvatar.

  Raises:
    AvatarError: anything missing or inconsistent; the message names the path and the fix.
  """
  from avflow_jax import tasks  # pylint: disable=g-import-not-at-top
  from avflow_jax.models import dit  # pylint: disable=g-import-not-at-top

  if which not in ("ema", "params"):
    raise AvatarError(f"which={which!r}: expected 'ema' or 'params'")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = read_run_config(workdir, "workdir")
  task = config.get("task", "av")
  if task != "av":
    raise AvatarError(f"{workdir}: a {task!r} run, not an avatar (AV) run")
  data_dir = _resolve_data_dir(workdir, config, data_dir)
  try:
    manifest = input_pipeline.load_manifest(data_dir)
  except (FileNotFoundError, ValueError) as e:
    raise AvatarError(str(e)) from e
  dims = manifest["dims"]
  for stream in ("tokens", "mel", "face", "head") + (
      ("participant",) if config.data.get("participant", False) else ()):
    if stream not in manifest["stats"]:
      raise AvatarError(f"{data_dir}/manifest.json: stats has no {stream!r} entry")

  vae_dir = _resolve_vae_dir(workdir, config)
  vae = tasks.head_vae_from_config(_vae_config(vae_dir, config), dims["head"])
  _, vae_params = load_tree(vae_dir, "params", f"head-VAE workdir {vae_dir}")
  _check_shape(f"{vae_dir} enc_in kernel", vae_params["enc_in"]["kernel"].shape,
               (dims["head"], vae.hidden), "the VAE was trained on other head-pose data")

  visual_dim = dims["face"] + vae.latent_dim
  model = dit.make_av_model(config.model, visual_dim=visual_dim, audio_dim=dims["mel"])
  step, av_params = load_tree(workdir, which, f"workdir {workdir}")
  cond_dim = dims["tokens"] + (dims.get("participant", 0)
                               if config.data.get("participant", False) else 0)
  _check_shape(f"{workdir} input_proj_a kernel", av_params["input_proj_a"]["kernel"].shape,
               (dims["mel"] + cond_dim, config.model.d_model),
               f"is data.dir ({data_dir}) the data this run was trained on?")
  _check_shape(f"{workdir} input_proj_v kernel", av_params["input_proj_v"]["kernel"].shape,
               (visual_dim + cond_dim, config.model.d_model),
               f"is data.dir ({data_dir}) the data this run was trained on?")

  device = device or jax.local_devices()[0]
  stats = {k: tuple(jnp.asarray(a) for a in v)
           for k, v in input_pipeline.stats_arrays(manifest).items()}
  params = jax.device_put({"av": av_params, "head_vae": vae_params, "stats": stats}, device)
  rig = load_face_rig(data_dir, manifest)
  logging.info("Loaded avatar %s (step %d, %s weights; data %s%s).", workdir, step, which,
               data_dir, ", face rig" if rig is not None else "")
  return LoadedAvatar(workdir=workdir, step=int(step), which=which, config=config,
                      data_dir=data_dir, manifest=manifest, model=model, head_vae=vae,
                      params=params, face_rig=rig)


def find_clip(data_dir: str, manifest: dict, name: str) -> tuple[str, dict]:
  """(split, manifest entry) of the clip called `name`; AvatarError naming close names if absent."""
  for split, info in manifest["splits"].items():
    for entry in info.get("clips", []):
      if entry["name"] == name:
        return split, entry
  names = [e["name"] for info in manifest["splits"].values() for e in info.get("clips", [])]
  hint = ", ".join(sorted(names)[:5])
  raise AvatarError(f"clip {name!r} is not in {data_dir}/manifest.json ({len(names)} clips, "
                    f"e.g. {hint})")


def read_clip(data_dir: str, manifest: dict, name: str) -> dict:
  """Reads one clip record (docs/data_format.md) by name from the shards."""
  import grain  # pylint: disable=g-import-not-at-top
  split, entry = find_clip(data_dir, manifest, name)
  path = os.path.join(data_dir, manifest["splits"][split]["shards"][entry["shard"]])
  if not os.path.exists(path):
    raise AvatarError(f"{path}: shard missing (clip {name!r})")
  source = grain.sources.ArrayRecordDataSource([path])
  record = records.decode_record(source[entry["index"]])
  if record.get("name") != name:
    raise AvatarError(f"{path}: record {entry['index']} is {record.get('name')!r}, the manifest "
                      f"says {name!r} (stale manifest?)")
  return record


def count_parameters(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def init_workdir(config, workdir: str, data_dir: str, seed: int = 0) -> str:
  """Writes a sampling-ready AV workdir with randomly initialised weights (no training).

  For benchmarks and tests of the sampling path: the layout is what `train.py` writes
  (WORKDIR/config.json, an orbax checkpoint whose state holds "params" and "ema", and the head
  VAE in WORKDIR/head_vae), so `load_avatar` cannot tell the difference.

  Args:
    config: an AV training config (e.g. configs/base.py).
    workdir: directory to create.
    data_dir: shard directory (only manifest.json is read: dims and stats).
    seed: init seed.

  Returns:
    The absolute workdir.
  """
  from avflow_jax import tasks  # pylint: disable=g-import-not-at-top
  from avflow_jax import train  # pylint: disable=g-import-not-at-top
  from avflow_jax.models import dit  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(os.path.expanduser(workdir))
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  manifest = input_pipeline.load_manifest(data_dir)
  dims = manifest["dims"]
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.dir = data_dir
    config.head_vae.workdir = os.path.join(workdir, "head_vae")
  vae_cfg = train.head_vae_config(config)
  train.save_run_config(config, workdir, data_dir)
  train.save_run_config(vae_cfg, config.head_vae.workdir, data_dir)

  rng_vae, rng_av = jax.random.split(jax.random.PRNGKey(seed))
  t = 16
  vae = tasks.head_vae_from_config(vae_cfg, dims["head"])
  vae_params = jax.jit(vae.init)(rng_vae, jnp.zeros((1, t, dims["head"])))["params"]
  cond_dim = dims["tokens"] + (dims.get("participant", 0) if config.data.participant else 0)
  visual_dim = dims["face"] + vae.latent_dim
  model = dit.make_av_model(config.model, visual_dim=visual_dim, audio_dim=dims["mel"])
  z = lambda d: jnp.zeros((1, t, d), jnp.float32)
  av_params = nn.unbox(jax.jit(model.init)(rng_av, z(visual_dim), z(dims["mel"]), z(cond_dim),
                                           jnp.zeros((1,)))["params"])
  for directory, params in ((config.head_vae.workdir, vae_params), (workdir, av_params)):
    manager = checkpointing.make_manager(os.path.join(directory, "checkpoints"), keep=1,
                                         async_save=False)
    state = {"step": jnp.zeros((), jnp.int32), "params": params, "ema": params}
    checkpointing.save(manager, 0, state, force=True)
    manager.wait_until_finished()
    manager.close()
  return workdir
