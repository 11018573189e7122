"""Knobs for training at scale: attention implementations, scanned layers, remat, bf16."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from avflow_jax.core import flow
from avflow_jax.models import attention
from avflow_jax.models import av_config
from avflow_jax.models import dit
from avflow_jax.models import layer_layout
from avflow_jax.training import config_validation
from configs import tiny

DIMS = av_config.AVDims(face=12, head_latent=4, audio=10, cond=7)
pytestmark = pytest.mark.usefixtures("fast_compile")  # Many small programs: compile >> run.


def _cfg(**kw):
  c = ml_collections.ConfigDict(dict(
      num_layers=2, d_model=32, hidden_dim=64, num_heads=2, windows=(4, 2), attention_block=8,
      fusion=True, dtype="float32", remat="none", attention="blocked", scan_layers=False))
  c.update(kw)
  return c


@pytest.fixture(scope="module")
def inputs():
  rng = np.random.default_rng(0)
  b, t = 2, 21
  return (rng.normal(size=(b, t, DIMS.visual)).astype(np.float32),
          rng.normal(size=(b, t, DIMS.audio)).astype(np.float32),
          rng.normal(size=(b, t, DIMS.cond)).astype(np.float32),
          np.array([0.3, 0.8], np.float32), jnp.array([21, 13]))


@pytest.fixture(scope="module")
def params():
  """Per-layer params with every leaf random: adaLN-zero's zero gates would hide the blocks."""
  model = dit.make_av_model(_cfg(), DIMS)
  shapes = nn.unbox(jax.eval_shape(lambda: dit.init_av_params(model, DIMS,
                                                              jax.random.PRNGKey(0))))
  leaves, treedef = jax.tree.flatten(shapes)
  rng = np.random.default_rng(1)
  return jax.tree.unflatten(treedef, [jnp.asarray(0.2 * rng.normal(size=x.shape), jnp.float32)
                                      for x in leaves])


def _outputs(cfg, params, inputs):
  model = dit.make_av_model(cfg, DIMS)
  return jax.jit(lambda p, x: model.apply({"params": p}, *x))(params, inputs)


def _grads(cfg, params, inputs):
  model = dit.make_av_model(cfg, DIMS)
  loss = lambda p, x: sum(jnp.mean(o ** 2) for o in model.apply({"params": p}, *x))
  return jax.jit(jax.grad(loss))(params, inputs)


def _rel_err(a, b) -> float:
  """max |a - b| over max |a|, worst leaf."""
  return max(jax.tree.leaves(jax.tree.map(
      lambda x, y: float(jnp.abs(x - y).max() / (jnp.abs(x).max() + 1e-12)), a, b)))


@pytest.mark.parametrize("window", [(16, 8), (3, 5), (0, 4), (6, 0), (0, 0)])
def test_cudnn_path_equals_blocked_with_edges_and_padding(window):
  rng = np.random.default_rng(2)
  q, k, v = (jnp.asarray(rng.normal(size=(3, 53, 2, 16)), jnp.float32) for _ in range(3))
  for lengths in (None, jnp.array([53, 30, 2])):
    want = attention.blocked_window_attention(q, k, v, window=window, lengths=lengths, block=8)
    got = attention.shifted_causal_attention(q, k, v, window=window, lengths=lengths,
                                             implementation="xla")
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert got.shape == want.shape and bool(jnp.isfinite(got).all())


@pytest.mark.parametrize("impl", ["dense", "cudnn"])
def test_model_attention_implementations_agree(params, inputs, impl):
  want = _outputs(_cfg(), params, inputs)
  got = _outputs(_cfg(attention=impl), params, inputs)
  assert _rel_err(want, got) < 1e-5


def test_auto_attention_picks_by_device_and_dtype(monkeypatch):
  assert attention.resolve_implementation("auto", jnp.float32, 128, "cpu") == "blocked"
  assert attention.resolve_implementation("auto", jnp.bfloat16, 128, "tpu") == "blocked"
  monkeypatch.setattr(attention, "cudnn_compiles", lambda dtype, head_dim: True)
  assert attention.resolve_implementation("auto", jnp.bfloat16, 128, "gpu") == "cudnn"
  assert attention.resolve_implementation("auto", jnp.float32, 128, "gpu") == "blocked"
  assert attention.resolve_implementation("auto", jnp.bfloat16, 256, "gpu") == "blocked"
  assert attention.resolve_implementation("dense", jnp.bfloat16, 128, "gpu") == "dense"
  # A GPU whose cuDNN cannot compile the kernel falls back instead of failing every run.
  monkeypatch.setattr(attention, "cudnn_compiles", lambda dtype, head_dim: False)
  assert attention.resolve_implementation("auto", jnp.bfloat16, 128, "gpu") == "blocked"


def test_the_cudnn_probe_says_no_where_the_kernel_cannot_compile():
  attention.cudnn_compiles.cache_clear()
  # The CPU has no cuDNN: the probe's compile fails and it answers False (and logs why).
  assert attention.cudnn_compiles("bfloat16", 16) is False


def test_scanned_layers_equal_the_unrolled_model(params, inputs):
  stacked = layer_layout.stack_layers(params)
  scanned = dit.make_av_model(_cfg(scan_layers=True), DIMS)
  shapes = nn.unbox(jax.eval_shape(lambda: dit.init_av_params(scanned, DIMS,
                                                              jax.random.PRNGKey(0))))
  # The converter gives exactly the scanned model's tree, leaf shapes included.
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, stacked)
  assert set(stacked) == {"input_proj_v", "input_proj_a", "time_embed", "out_v", "out_a",
                          layer_layout.SCAN_NAME}
  assert _rel_err(_outputs(_cfg(), params, inputs),
                  _outputs(_cfg(scan_layers=True), stacked, inputs)) < 1e-5
  got = layer_layout.unstack_layers(_grads(_cfg(scan_layers=True), stacked, inputs))
  assert _rel_err(_grads(_cfg(), params, inputs), got) < 1e-5
  back = layer_layout.unstack_layers(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back),
                                                  jax.tree.leaves(params)))
  assert layer_layout.to_layout(params, True).keys() == stacked.keys()
  assert layer_layout.to_layout(stacked, False).keys() == params.keys()
  # The scanned params carry a "layers" logical axis, which the mesh rules leave unsharded.
  boxed = dit.init_av_params(scanned, DIMS, jax.random.PRNGKey(0))
  names = boxed[layer_layout.SCAN_NAME]["fusion"]["kernel"].names
  assert names == ("layers", "embed", "fusion")


@pytest.mark.parametrize("policy", ["full", "dots_saveable", "dots_with_no_batch_dims_saveable"])
def test_remat_policies_keep_the_gradients(params, inputs, policy):
  want = _grads(_cfg(), params, inputs)
  assert _rel_err(want, _grads(_cfg(remat=policy), params, inputs)) < 1e-5
  got = _grads(_cfg(remat=policy, scan_layers=True), layer_layout.stack_layers(params), inputs)
  assert _rel_err(want, layer_layout.unstack_layers(got)) < 1e-5


def test_bf16_compute_keeps_float32_params_and_a_close_loss(params, inputs):
  xv, xa, cond, t, lengths = inputs
  rng = np.random.default_rng(3)
  noise_v, noise_a = rng.normal(size=xv.shape), rng.normal(size=xa.shape)

  def loss(dtype):
    model = dit.make_av_model(_cfg(dtype=dtype), DIMS)
    tt = t[:, None, None]
    zv, za = flow.interpolate(noise_v, xv, tt), flow.interpolate(noise_a, xa, tt)
    pv, pa = model.apply({"params": params}, zv, za, cond, t, lengths)
    assert pv.dtype == jnp.float32 and pa.dtype == jnp.float32
    return (jnp.mean(jnp.abs(pv - flow.velocity_target(noise_v, xv)))
            + jnp.mean(jnp.abs(pa - flow.velocity_target(noise_a, xa))))

  f32, bf16 = float(loss("float32")), float(loss("bfloat16"))
  assert abs(bf16 - f32) / f32 < 0.01, (f32, bf16)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


def _validate(**model):
  c = tiny.get_config()
  for k, v in model.items():
    c.model[k] = v
  manifest = {"dims": {"mel": 80, "tokens": 29, "face": 256, "head": 7, "participant": 0},
              "splits": {"train": {}, "val": {}}}
  config_validation.validate(c, manifest, num_devices=8, num_processes=1)


@pytest.mark.parametrize("knobs,message", [
    (dict(attention="flash"), "config.model.attention: 'flash'"),
    (dict(remat="some"), "config.model.remat='some'"),
    (dict(scan_layers=True, windows=((4, 2), (8, 0))), "config.model.scan_layers: a scanned"),
])
def test_scale_knobs_are_validated(knobs, message):
  with pytest.raises(ValueError, match=message):
    _validate(**knobs)
  _validate(attention="cudnn", remat="full")
  _validate(scan_layers=True, remat="dots_saveable")


def test_scanned_bf16_remat_model_trains_on_an_fsdp_mesh(tiny_shards):
  """train.py's step (EMA, masks, head-VAE encode, finite guard) with every scale knob on."""
  from avflow_jax.core import sharding  # pylint: disable=g-import-not-at-top
  from avflow_jax.data import manifest as manifest_lib  # pylint: disable=g-import-not-at-top
  from avflow_jax.data import rows as rows_lib  # pylint: disable=g-import-not-at-top
  from avflow_jax.models import head_vae  # pylint: disable=g-import-not-at-top
  from avflow_jax.training import head_vae_recipe  # pylint: disable=g-import-not-at-top
  from avflow_jax.training import loop  # pylint: disable=g-import-not-at-top
  from avflow_jax.training import optim  # pylint: disable=g-import-not-at-top
  from avflow_jax.training import tasks  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.model.update(scan_layers=True, remat="dots_saveable", dtype="bfloat16",
                      attention="cudnn")
  config.mesh.fsdp = 2
  manifest = manifest_lib.load_manifest(tiny_shards)
  vae = head_vae.from_config(head_vae_recipe.for_av_run(config), manifest["dims"]["head"])
  vae_params = vae.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, manifest["dims"]["head"])))
  task = tasks.build_av_task(config, manifest, tiny_shards, vae, vae_params["params"])
  tx, schedule = optim.make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh)
  init_fn, state_sh, _ = loop.make_train_state(task, tx, mesh, jax.random.PRNGKey(0),
                                               config.mesh.rules)
  train_step, _ = loop.jit_steps(task, tx, schedule, config, mesh, state_sh)
  rows = rows_lib.process_rows(config.batch_size, sharding.batch_sharding(mesh))
  it = iter(task.make_dataset("train", 0, rows))
  state = init_fn(jax.random.PRNGKey(0))
  kernel = state["params"][layer_layout.SCAN_NAME]["block_v"]["ff"]["fc1"]["kernel"]
  assert kernel.shape == (2, 32, 64) and kernel.dtype == jnp.float32
  assert kernel.sharding.spec[1] == "fsdp"  # The stacked kernels are split on d_model.
  for _ in range(2):
    state, metrics = train_step(state, sharding.global_batch(next(it), mesh))
  assert np.isfinite(float(metrics["loss"])) and int(state["step"]) == 2


def test_a_scanned_run_samples_and_exports_the_official_layout(tiny_shards, tmp_path):
  """Every loader converts the layer layout: sampling a scanned run, and its official keys."""
  from avflow_jax import api  # pylint: disable=g-import-not-at-top
  from avflow_jax.core import run_dir  # pylint: disable=g-import-not-at-top
  from avflow_jax.models import official_keys  # pylint: disable=g-import-not-at-top
  from avflow_jax.training import random_init  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.model.scan_layers = True
  workdir = random_init.init_workdir(config, str(tmp_path / "scanned"), tiny_shards)
  _, stacked = run_dir.load_params(workdir, "ema")
  assert layer_layout.is_stacked(stacked)
  tokens = np.random.default_rng(0).normal(size=(40, 29)).astype(np.float32)
  scanned = api.Avatar.load(workdir).sample_motion(tokens, seed=3)
  # The same weights read by an unrolled model (the run's config edited) sample the same.
  saved = run_dir.read_run_config(workdir)
  saved.model.scan_layers = False
  run_dir.save_run_config(saved, workdir, tiny_shards)
  unrolled = api.Avatar.load(workdir).sample_motion(tokens, seed=3)
  for k in scanned:
    np.testing.assert_allclose(scanned[k], unrolled[k], atol=1e-5)
  state = official_keys.official_from_av_params(layer_layout.to_layout(jax.device_get(stacked), False))
  assert "diffusion_module.fusion.1.weight" in state
