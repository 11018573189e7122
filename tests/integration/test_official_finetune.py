"""Fine-tuning an imported official release: `train --config.init.workdir=RUN`."""

import os

import jax
import numpy as np

from avflow_jax.core import cli
from avflow_jax.core import run_dir
from avflow_jax.core import sharding
from avflow_jax.core import torch_reader
from avflow_jax.core import torch_writer
from avflow_jax.inference import official_import
from avflow_jax.models import av_config
from avflow_jax.models import dit
from avflow_jax.training import init_from
from avflow_jax.training import loop
from avflow_jax.training import optim
from avflow_jax.training import task as task_lib
from data_prep import synthetic

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "official")
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _config(**overrides):
  c = cli.load_config_file(os.path.join(ROOT, "configs", "official_50h.py"))
  with c.unlocked():
    c.model.windows = ((16, 8), (16, 8), (4, 2))  # The fixture model's sizes.
    c.model.num_heads = 4
    c.model.num_layers, c.model.d_model, c.model.hidden_dim = 3, 64, 128
    c.data.crop_frames = 48
    c.data.cache_mb = 0
    c.batch_size = 8
    c.log_every = 1
    c.eval_every = 0
    c.ckpt_every = 1
    c.compilation_cache_dir = ""
    for k, v in overrides.items():
      target = c
      *path, last = k.split(".")
      for p in path:
        target = target[p]
      target[last] = v
  return c


def _import(tmp_path, av, adam=False):
  stats = tmp_path / "normstats"
  stats.mkdir(exist_ok=True)
  io = np.load(os.path.join(DATA, "head_vae_io.npz"))
  for name in official_import.HEAD_STATS:
    np.save(stats / f"{name}.npy", io[name])
  files = official_import.ReleaseFiles(av=av, head_vae=os.path.join(
      DATA, "head_vae_iter-0500000.pt"), head_stats=str(stats))
  return official_import.import_release(files, str(tmp_path / "imported"), _config(),
                                        adam_moments=adam, log=lambda *_: None)


def test_finetune_starts_from_the_imported_weights_and_statistics(tmp_path):
  run = _import(tmp_path, os.path.join(DATA, "av_flow_small.pt"))
  shards = synthetic.write_synthetic_shards(str(tmp_path / "shards"), n_train=8, n_val=2)
  work = str(tmp_path / "finetune")
  # A vanishing lr (and no weight decay): the weights must stay the imported ones.
  config = _config(**{"data.dir": shards, "init.workdir": run, "num_steps": 2,
                      "optim.lr": 1e-30})
  loop.train_and_evaluate(config, work)
  saved = run_dir.read_run_config(work)
  assert saved.data.stats_from == os.path.join(run, official_import.NORMALISATION_DIR)
  assert saved.head_vae.workdir == os.path.join(run, "head_vae")
  _, got = run_dir.load_params(work, "params")
  _, want = run_dir.load_params(run, "params")
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-20),
               jax.device_get(got), jax.device_get(want))


def test_adam_moments_come_from_the_official_file(tmp_path):
  # The fixture took no optimiser step: give it moments as a trained file has them.
  obj = torch_reader.read_torch_checkpoint(os.path.join(DATA, "av_flow_small.pt"))
  rng = np.random.default_rng(0)
  sd = obj["model_state_dict"]
  obj["optimizer_state_dict"]["state"] = {
      i: {"step": np.float32(1234.0), "exp_avg": rng.normal(size=v.shape).astype(np.float32),
          "exp_avg_sq": rng.uniform(size=v.shape).astype(np.float32)}
      for i, v in enumerate(sd.values())}
  path = str(tmp_path / "trained.pt")
  torch_writer.write_torch_checkpoint(path, obj)
  run = _import(tmp_path, path, adam=True)

  config = _config(**{"init.workdir": run, "init.adam_moments": True})
  dims = av_config.AVDims(face=256, head_latent=8, audio=80, cond=29)
  model = dit.make_av_model(config.model, dims)
  task = task_lib.Task("av", lambda r: dit.init_av_params(model, dims, r), None, None, 48)
  tx, _ = optim.make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh)
  init_fn, state_sharding, _ = loop.make_train_state(task, tx, mesh, jax.random.PRNGKey(0),
                                                     config.mesh.rules)
  state = init_from.apply(config, init_fn(jax.random.PRNGKey(0)), state_sharding)
  adam = init_from._adam_state(state["opt_state"])  # pylint: disable=protected-access
  assert int(adam.count) == 1234
  first = list(sd)[0]  # diffusion_module.time_embed.mlp.0.weight -> time_embed/fc1 kernel.
  assert first == "diffusion_module.time_embed.mlp.0.weight"
  np.testing.assert_array_equal(np.asarray(adam.mu["time_embed"]["fc1"]["kernel"]),
                                obj["optimizer_state_dict"]["state"][0]["exp_avg"].T)
  np.testing.assert_array_equal(np.asarray(adam.nu["out_a"]["bias"]),
                                obj["optimizer_state_dict"]["state"][len(sd) - 1]["exp_avg_sq"])
