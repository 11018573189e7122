"""The jitted Euler sampler: determinism, shapes, batch sharding, no recompilation."""

import jax
import jax.numpy as jnp
import numpy as np

from avflow_jax.core import sharding
from avflow_jax.data import manifest as manifest_lib
from avflow_jax.inference import sampling
from avflow_jax.models import av_config
from avflow_jax.models import dit
from avflow_jax.models import head_vae
from configs import tiny


def _setup(tiny_shards):
  manifest = manifest_lib.load_manifest(tiny_shards)
  model = dit.make_av_model(
      tiny.get_config().model, av_config.AVDims(face=256, head_latent=8, audio=80, cond=29))
  vae = head_vae.HeadVAE(input_dim=7, ff_dim=32)
  t = 40
  av_params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, t, 264)), jnp.zeros((1, t, 80)),
                         jnp.zeros((1, t, 29)), jnp.zeros((1,)))["params"]
  vae_params = vae.init(jax.random.PRNGKey(1), jnp.zeros((1, t, 7)))["params"]
  import flax.linen as nn
  params = {"av": nn.unbox(av_params), "head_vae": vae_params,
            "stats": manifest_lib.stats_arrays(manifest)}
  return model, vae, params


def test_sampler_shapes_and_determinism(tiny_shards):
  model, vae, params = _setup(tiny_shards)
  tokens = jax.random.normal(jax.random.PRNGKey(3), (8, 50, 29))
  out1 = sampling.sample(model, vae, params, tokens, jax.random.PRNGKey(7))
  out2 = sampling.sample(model, vae, params, tokens, jax.random.PRNGKey(7))
  out3 = sampling.sample(model, vae, params, tokens, jax.random.PRNGKey(8))
  assert out1["mel"].shape == (8, 50, 80)
  assert out1["face"].shape == (8, 50, 256)
  assert out1["head"].shape == (8, 50, 7)
  for k in out1:
    np.testing.assert_array_equal(out1[k], out2[k])
  assert not np.allclose(out1["mel"], out3["mel"])
  np.testing.assert_allclose(np.linalg.norm(out1["head"][..., :4], axis=-1), 1.0, atol=1e-5)
  assert np.isfinite(out1["mel"]).all()


def test_sampler_keeps_batch_sharding_and_step_count_matters(tiny_shards):
  model, vae, params = _setup(tiny_shards)
  cfg = tiny.get_config().mesh
  mesh = sharding.make_mesh(cfg)
  tokens = jax.device_put(jax.random.normal(jax.random.PRNGKey(3), (8, 24, 29)),
                          sharding.batch_sharding(mesh))
  out = sampling.sample(model, vae, params, tokens, jax.random.PRNGKey(0), num_steps=8)
  assert out["mel"].sharding.is_equivalent_to(sharding.batch_sharding(mesh), 3)
  one = sampling.sample(model, vae, params, tokens, jax.random.PRNGKey(0), num_steps=1)
  assert not np.allclose(out["mel"], one["mel"])


def test_sampler_memory_is_linear_in_length(tiny_shards):
  """The whole compiled sampler (DiT solve + head-VAE decode) holds no T x T buffer."""
  model, vae, params = _setup(tiny_shards)

  def temp_bytes(t):
    tokens = jax.ShapeDtypeStruct((1, t, 29), jnp.float32)
    lengths = jax.ShapeDtypeStruct((1,), jnp.int32)
    compiled = jax.jit(lambda p, tok, n: sampling.sample(
        model, vae, p, tok, jax.random.PRNGKey(0), num_steps=2, lengths=n)).lower(
            params, tokens, lengths).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  small, large = temp_bytes(4096), temp_bytes(16384)
  assert large / small < 6, (small, large)  # Quadratic would be ~16.
