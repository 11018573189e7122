"""Loading a trained avatar (AV model + head-pose VAE + data statistics) for sampling.

A training workdir holds everything needed except the data statistics and the face rig, which
live next to the shards: WORKDIR/config.json names the shard directory (`data.dir`, whose
manifest.json carries `stats`, `dims` and `face_decoder`) and the head-VAE workdir
(`head_vae.workdir`). Every failure names the path involved and how to fix it.
"""

import dataclasses
import os
from typing import Any, Optional

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from avflow_jax.core import run_dir
from avflow_jax.core.errors import AvatarError
from avflow_jax.data import manifest as manifest_lib
from avflow_jax.models import av_config
from avflow_jax.models import dit
from avflow_jax.models import head_vae as head_vae_lib
from avflow_jax.models import layer_layout


@dataclasses.dataclass(frozen=True)
class LoadedAvatar:
  """A trained avatar, ready for `sampling.sample`.

  Attributes:
    workdir: the AV training workdir (absolute).
    step: training step of the loaded checkpoint.
    which: "ema" or "params".
    config: the run's ConfigDict (WORKDIR/config.json).
    data_dir: the shard directory whose clips (and face rig) are used.
    manifest: its manifest, with the statistics the run was trained with (`_stats_source`).
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

  @property
  def sample_temperature(self) -> float:
    """The noise temperature the run samples at by default (`config.sample.temperature`; 1.0,
    the trained distribution, for runs saved before the field existed)."""
    return run_dir.sample_temperature(self.config)


def _resolve_data_dir(workdir: str, config, data_dir: Optional[str]) -> str:
  if data_dir:
    path = os.path.abspath(os.path.expanduser(data_dir))
    if not os.path.exists(os.path.join(path, "manifest.json")):
      raise AvatarError(f"{path}/manifest.json: missing (data_dir override is not a shard "
                        "directory)")
    return path
  stored = config.data.get("dir")
  if not stored:
    raise AvatarError(f"{workdir}/{run_dir.RUN_CONFIG}: data.dir is empty (the run's shard directory "
                      "is unknown); pass the shard directory explicitly (--data-dir)")
  path = os.path.abspath(os.path.expanduser(stored))
  if not os.path.exists(os.path.join(path, "manifest.json")):
    raise AvatarError(
        f"{path}/manifest.json: missing (the data dir recorded in {workdir}/{run_dir.RUN_CONFIG} has "
        "moved or been deleted; its manifest holds the normalisation stats). Fix: pass the "
        f"shard directory with --data-dir (data_dir=...), or edit data.dir in {run_dir.RUN_CONFIG}")
  return path


def _stats_source(config, data_dir: str) -> Optional[str]:
  """The shard directory whose statistics normalise this run's inputs and outputs.

  The model only understands the normalisation it was trained with: `data.stats_from` if the
  run set it, else the data dir it trained on while that still exists, so that scoring the run
  on another corpus (`data_dir` pointing elsewhere) changes the clips and not the scaling. A
  recorded data dir that is gone means the data moved: `data_dir`'s own statistics, None.
  """
  if config.data.get("stats_from"):
    return config.data.stats_from
  stored = config.data.get("dir")
  if stored:
    path = os.path.abspath(os.path.expanduser(stored))
    if path != data_dir and os.path.exists(os.path.join(path, "manifest.json")):
      return path
  return None


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
      f"set head_vae.workdir in {workdir}/{run_dir.RUN_CONFIG} to the VAE's training workdir")


def _vae_config(vae_dir: str, config):
  """The VAE's own run config, or (runs without one) the default architecture of the AV run."""
  if run_dir.has_run_config(vae_dir):
    c = run_dir.read_run_config(vae_dir, "head-VAE workdir")
    if "vae" in c:
      return c
  vae = head_vae_lib.default_config()
  vae.ff_dim = config.head_vae.get("ff_dim", vae.ff_dim)
  return ml_collections.ConfigDict({"vae": vae})


def _check_shape(what: str, got, expected, fix: str):
  if tuple(got) != tuple(expected):
    raise AvatarError(f"{what}: checkpoint has shape {tuple(got)}, the model built from the "
                      f"run config expects {tuple(expected)}; {fix}")


def _check_av_shapes(workdir: str, params, model, dims: av_config.AVDims, variant: str,
                     fix: str) -> None:
  """Every AV weight has the shape the run config's model needs (or one line naming it)."""
  want = jax.eval_shape(lambda: nn.unbox(dit.init_av_params(
      model, dims, jax.random.PRNGKey(0))))
  got = {jax.tree_util.keystr(k): v.shape
         for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
  for path, leaf in jax.tree_util.tree_flatten_with_path(want)[0]:
    name = jax.tree_util.keystr(path)
    if name not in got:
      raise AvatarError(f"{workdir}: the checkpoint has no weight {name} that the model built "
                        f"from the run config needs (model.variant {variant!r})")
    _check_shape(f"{workdir} {name}", got[name], leaf.shape, fix)


def load_avatar(workdir: str, which: str = "ema", data_dir: Optional[str] = None,
                device=None, step: Optional[int] = None) -> LoadedAvatar:
  """Loads the latest checkpoint of an AV training workdir (or its checkpoint `step`) for sampling.

  Args:
    workdir: the AV run's workdir (holds config.json and checkpoints/).
    which: "ema" (the averaged weights, for sampling) or "params" (the raw weights).
    data_dir: shard directory to take the clips from, overriding the recorded data.dir (the
      data moved, or another corpus to score on); the normalisation stays the run's own.
    device: where the params go (default: the first local device).
    step: the checkpoint step to load (default: the latest intact one).

  Returns:
    A LoadedAvatar.

  Raises:
    AvatarError: anything missing or inconsistent; the message names the path and the fix.
  """
  if which not in ("ema", "params"):
    raise AvatarError(f"which={which!r}: expected 'ema' or 'params'")
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = run_dir.read_run_config(workdir, "workdir")
  task = config.get("task", "av")
  if task != "av":
    raise AvatarError(f"{workdir}: a {task!r} run, not an avatar (AV) run")
  data_dir = _resolve_data_dir(workdir, config, data_dir)
  try:
    manifest = manifest_lib.with_stats_from(manifest_lib.load_manifest(data_dir), data_dir,
                                            _stats_source(config, data_dir))
  except (FileNotFoundError, ValueError) as e:
    raise AvatarError(str(e)) from e
  dims = manifest["dims"]
  for stream in ("tokens", "mel", "face", "head") + (
      ("participant",) if config.data.get("participant", False) else ()):
    if stream not in manifest["stats"]:
      raise AvatarError(f"{data_dir}/manifest.json: stats has no {stream!r} entry")

  vae_dir = _resolve_vae_dir(workdir, config)
  vae = head_vae_lib.from_config(_vae_config(vae_dir, config), dims["head"])
  _, vae_params = run_dir.load_params(vae_dir, "params", what=f"head-VAE workdir {vae_dir}")
  _check_shape(f"{vae_dir} enc_in kernel", vae_params["enc_in"]["kernel"].shape,
               (dims["head"], vae.hidden), "the VAE was trained on other head-pose data")

  av_dims = av_config.AVDims.from_data(dims, vae.latent_dim, config.data.get("participant", False))
  model = dit.make_av_model(config.model, av_dims)
  step, av_params = run_dir.load_params(workdir, which, step=step)
  # Either layer layout samples (the ablation variants have only the per-layer one).
  av_params = layer_layout.to_layout(av_params, bool(config.model.get("scan_layers", False)))
  _check_av_shapes(workdir, av_params, model, av_dims, av_config.variant_of(config.model),
                   f"is data.dir ({data_dir}) the data this run was trained on?")

  device = device or jax.local_devices()[0]
  stats = {k: tuple(jnp.asarray(a) for a in v)
           for k, v in manifest_lib.stats_arrays(manifest).items()}
  params = jax.device_put({"av": av_params, "head_vae": vae_params, "stats": stats}, device)
  rig = manifest_lib.load_face_rig(data_dir, manifest)
  logging.info("Loaded avatar %s (step %d, %s weights; data %s%s).", workdir, step, which,
               data_dir, ", face rig" if rig is not None else "")
  return LoadedAvatar(workdir=workdir, step=int(step), which=which, config=config,
                      data_dir=data_dir, manifest=manifest, model=model, head_vae=vae,
                      params=params, face_rig=rig)
