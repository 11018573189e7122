"""A sampling-ready AV run with randomly initialised weights, written without training.

For benchmarks and tests of the sampling path: the layout is what training writes
(WORKDIR/config.json, an orbax checkpoint whose state holds "params" and "ema", and the head VAE
in WORKDIR/head_vae), so `inference.loading.load_avatar` cannot tell the difference.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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


def init_t2t_workdir(config, workdir: str, data_dir: str, seed: int = 0) -> str:
  """Writes a text-to-tokens workdir with random weights at step 1 (what `train` writes).

  The weights are drawn in numpy on the shapes of a trace (compiling the real init costs ~10 s
  of CPU): weights N(0, 0.1²), norm scales 1, biases 0, so the network's outputs stay on the
  scale a trained one gives.

  Args:
    config: a text-to-tokens config (configs/text_to_tokens.py).
    workdir: directory to create.
    data_dir: the data directory recorded in config.json.
    seed: numpy seed of the weights.

  Returns:
    The absolute workdir.
  """
  from avflow_jax.models import text_to_tokens  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(os.path.expanduser(workdir))
  run_dir.save_run_config(config, workdir, data_dir)
  model = text_to_tokens.make_model(config)
  shapes = jax.eval_shape(lambda: text_to_tokens.init_params(model, jax.random.PRNGKey(0), 16,
                                                             32))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = getattr(path[-1], "key", str(path[-1]))
    if name == "scale":
      return np.ones(leaf.shape, leaf.dtype)
    if name == "bias":
      return np.zeros(leaf.shape, leaf.dtype)
    return (0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)
  params = jax.tree_util.tree_map_with_path(fill, shapes)
  manager = checkpointing.make_manager(run_dir.checkpoint_root(workdir), keep=1,
                                       async_save=False)
  checkpointing.save(manager, 1, {"step": np.int32(1), "params": params, "ema": params},
                     force=True)
  checkpointing.seal(manager, [1])
  manager.close()
  return workdir
