"""A sampling-ready AV run with randomly initialised weights, written without training.

For benchmarks and tests of the sampling path: the layout is what training writes
(WORKDIR/config.json, an orbax checkpoint whose state holds "params" and "ema", and the head VAE
in WORKDIR/head_vae), so `inference.loading.load_avatar` cannot tell the difference.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp

from avflow_jax.core import checkpointing
from avflow_jax.core import run_dir
from avflow_jax.data import manifest as manifest_lib
from avflow_jax.models import av_config
from avflow_jax.models import dit
from avflow_jax.models import head_vae as head_vae_lib
from avflow_jax.training import head_vae_recipe


def _write_checkpoint(workdir: str, params) -> None:
  manager = checkpointing.make_manager(run_dir.checkpoint_root(workdir), keep=1,
                                       async_save=False)
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "ema": params}
  checkpointing.save(manager, 0, state, force=True)
  checkpointing.seal(manager, [0])
  manager.close()


def init_workdir(config, workdir: str, data_dir: str, seed: int = 0) -> str:
  """Writes an AV workdir (and its head VAE) with random weights at step 0.

  Args:
    config: an AV training config (e.g. configs/base.py).
    workdir: directory to create.
    data_dir: shard directory (only manifest.json is read: dims and stats).
    seed: init seed.

  Returns:
    The absolute workdir.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  data_dir = os.path.abspath(os.path.expanduser(data_dir))
  dims = manifest_lib.load_manifest(data_dir)["dims"]
  config = config.copy_and_resolve_references()
  with config.unlocked():
    config.data.dir = data_dir
    config.head_vae.workdir = os.path.join(workdir, run_dir.HEAD_VAE_DIR)
  vae_cfg = head_vae_recipe.for_av_run(config)
  run_dir.save_run_config(config, workdir, data_dir)
  run_dir.save_run_config(vae_cfg, config.head_vae.workdir, data_dir)

  rng_vae, rng_av = jax.random.split(jax.random.PRNGKey(seed))
  vae = head_vae_lib.from_config(vae_cfg, dims["head"])
  vae_params = jax.jit(vae.init)(rng_vae, jnp.zeros((1, 16, dims["head"])))["params"]
  av_dims = av_config.AVDims.from_data(dims, vae.latent_dim, config.data.participant)
  model = dit.make_av_model(config.model, av_dims)
  av_params = nn.unbox(jax.jit(lambda r: dit.init_av_params(model, av_dims, r))(rng_av))
  _write_checkpoint(config.head_vae.workdir, vae_params)
  _write_checkpoint(workdir, av_params)
  return workdir
