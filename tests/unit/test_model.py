"""The AV-Flow network: shapes, parameter count, attention equivalence, adaLN-zero init."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avflow_jax.models import attention
from avflow_jax.models import av_config  # pylint: disable=g-import-not-at-top
from avflow_jax.models import dit
from configs import base


def _init_shapes(model, t=16, cond=29):
  return jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, t, model.visual_dim)),
      jnp.zeros((1, t, model.audio_dim)), jnp.zeros((1, t, cond)), jnp.zeros((1,))))


def test_base_parameter_count_equals_official():
  model = dit.make_av_model(
      base.get_config().model, av_config.AVDims(face=256, head_latent=8, audio=80, cond=29))
  n = sum(x.size for x in jax.tree.leaves(nn.unbox(_init_shapes(model))))
  assert n == 67_935_576


def test_output_shapes_and_dtype():
  model = dit.AVFlowTransformer(visual_dim=264, audio_dim=80, d_model=32, hidden_dim=64,
                                num_heads=2, windows=((4, 2),) * 2, attention_block=8)
  x_v, x_a = jnp.ones((3, 37, 264)), jnp.ones((3, 37, 80))
  cond, t = jnp.ones((3, 37, 29)), jnp.full((3,), 0.5)
  params = model.init(jax.random.PRNGKey(0), x_v, x_a, cond, t)
  v_v, v_a = model.apply(params, x_v, x_a, cond, t)
  assert v_v.shape == (3, 37, 264) and v_a.shape == (3, 37, 80)
  assert v_v.dtype == jnp.float32


def test_adaln_zero_blocks_start_as_identity():
  block = dit.DiTBlock(d_model=16, hidden_dim=32, num_heads=2, window=(2, 1), block=4)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 10, 16))
  temb = jax.random.normal(jax.random.PRNGKey(2), (2, 16))
  params = block.init(jax.random.PRNGKey(0), x, temb)
  np.testing.assert_allclose(block.apply(params, x, temb), x, atol=1e-6)


def test_initial_weights_follow_torch_default_init():
  """Every Linear: weights and biases U(+-1/sqrt(fan_in)); adaLN-zero: gate columns and bias 0.

  The official model keeps torch's default Linear init; Flax's lecun_normal (sqrt(3) larger,
  zero biases) blows up the residual stream through the ungated fusion layers.
  """
  model = dit.AVFlowTransformer(visual_dim=264, audio_dim=80, d_model=64, hidden_dim=128,
                                num_heads=4, windows=((8, 4),) * 2, attention_block=16)
  params = nn.unbox(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 264)),
                               jnp.zeros((1, 16, 80)), jnp.zeros((1, 16, 29)),
                               jnp.zeros((1,))))["params"]
  flat = {"/".join(k.key for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(params)}
  kernels = [k for k in flat if k.endswith("/kernel")]
  assert len(kernels) == 4 + 2 * 2 * (2 * 2 + 2) + 2 + 2  # in/out, blocks, fusion, time MLP
  for name in kernels:
    w, b = flat[name], flat[name[:-len("kernel")] + "bias"]
    bound = 1 / np.sqrt(w.shape[0])
    if "/adaln/" in name:
      d = w.shape[1] // 3
      assert not w[:, :d].any() and not b.any(), name  # alpha(t) = 0: identity sublayers.
      w = w[:, d:]
    else:
      assert np.abs(b).max() <= bound and np.abs(b).max() > 0.5 * bound, name
    assert np.abs(w).max() <= bound, name
    # U(-a, a) has std a / sqrt(3); lecun_normal would give a.
    np.testing.assert_allclose(w.std(), bound / np.sqrt(3), rtol=0.1, err_msg=name)


def test_initial_residual_stream_stays_bounded():
  """At init the fusion layers grow the stream's std by about 2x, not 4x (lecun_normal)."""
  model = dit.AVFlowTransformer(visual_dim=264, audio_dim=80, d_model=128, hidden_dim=256,
                                num_heads=4, windows=((8, 4),) * 4, attention_block=16)
  ks = jax.random.split(jax.random.PRNGKey(3), 4)
  x_v, x_a = jax.random.normal(ks[0], (2, 64, 264)), jax.random.normal(ks[1], (2, 64, 80))
  cond = jax.random.normal(ks[2], (2, 64, 29))
  t = jnp.full((2,), 0.5)
  params = model.init(ks[3], x_v, x_a, cond, t)
  _, state = model.apply(params, x_v, x_a, cond, t, capture_intermediates=True,
                         mutable=["intermediates"])
  inter = state["intermediates"]
  first = float(jnp.std(inter["input_proj_a"]["__call__"][0]))
  stream = inter["block_a_3"]["__call__"][0] + inter["fusion_3"]["__call__"][0][..., :128]
  last = float(jnp.std(stream))
  assert last < 2.5 * first, (first, last)


@pytest.mark.parametrize("t", [1, 31, 33, 257])
@pytest.mark.parametrize("window,block", [((16, 8), 16), ((3, 0), 4), ((0, 5), 8)])
def test_blocked_window_attention_equals_dense_masked(t, window, block):
  ks = jax.random.split(jax.random.PRNGKey(t), 3)
  q, k, v = (jax.random.normal(kk, (2, t, 4, 16)) for kk in ks)
  lengths = jnp.array([t, max(1, t - 6)])
  dense = attention.dense_attention(q, k, v, window=window, lengths=lengths)
  blocked = attention.blocked_window_attention(q, k, v, window=window, lengths=lengths,
                                               block=block)
  np.testing.assert_allclose(blocked, dense, atol=1e-5)


def test_blocked_attention_never_builds_t_by_t_scores():
  t, block = 4096, 64
  q = jnp.zeros((1, t, 2, 8))
  jaxpr = jax.make_jaxpr(lambda q: attention.blocked_window_attention(
      q, q, q, window=(16, 8), block=block))(q)
  sizes = [int(np.prod(v.aval.shape)) for eqn in jaxpr.eqns for v in eqn.outvars]
  assert max(sizes) < t * t // 8  # Largest intermediate is O(T * (block + window)).


def test_unbounded_window_uses_full_attention():
  ks = jax.random.split(jax.random.PRNGKey(0), 3)
  q, k, v = (jax.random.normal(kk, (1, 20, 2, 8)) for kk in ks)
  out = attention.windowed_attention(q, k, v, window=(-1, -1))
  np.testing.assert_allclose(out, attention.dense_attention(q, k, v), atol=1e-6)


def test_padding_frames_do_not_change_valid_outputs():
  model = dit.AVFlowTransformer(visual_dim=10, audio_dim=6, d_model=16, hidden_dim=32,
                                num_heads=2, windows=((4, 2),) * 2, attention_block=8)
  rng = np.random.default_rng(0)
  x_v, x_a, cond = (jnp.asarray(rng.normal(size=(1, 30, d)), jnp.float32) for d in (10, 6, 29))
  t = jnp.array([0.3])
  params = model.init(jax.random.PRNGKey(0), x_v, x_a, cond, t)
  # Perturb the frames after 20: with lengths=20 the first 20 outputs must not move.
  noise = jnp.zeros_like(x_v).at[:, 20:].set(5.0)
  a = model.apply(params, x_v, x_a, cond, t, jnp.array([20]))
  b = model.apply(params, x_v + noise, x_a, cond, t, jnp.array([20]))
  np.testing.assert_allclose(a[0][:, :20], b[0][:, :20], atol=1e-5)


def test_rotary_is_relative():
  """Scores of rotated q/k depend only on the position offset."""
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 8))
  k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 8))
  def score(pq, pk):
    rq = attention.rotary_embedding(q, jnp.array([pq]))
    rk = attention.rotary_embedding(k, jnp.array([pk]))
    return float((rq * rk).sum())
  assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-5)
  assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)


def test_negative_window_side_is_unbounded_on_that_side_only():
  """(-1, 0) is causal attention, not full attention (the official None on one side)."""
  ks = jax.random.split(jax.random.PRNGKey(5), 3)
  q, k, v = (jax.random.normal(kk, (1, 20, 2, 8)) for kk in ks)
  causal = attention.windowed_attention(q, k, v, window=(-1, 0))
  v2 = v.at[:, 10:].add(100.0)  # Changing future frames must not change the past.
  np.testing.assert_allclose(attention.windowed_attention(q, k, v2, window=(-1, 0))[:, :10],
                             causal[:, :10], atol=1e-5)
  full = attention.windowed_attention(q, k, v, window=None)
  assert not np.allclose(causal[:, :10], full[:, :10], atol=1e-3)
  # (2, -1): two frames back, everything ahead.
  out = attention.windowed_attention(q, k, v.at[:, 0].add(100.0), window=(2, -1))
  np.testing.assert_allclose(out[:, 5:], attention.windowed_attention(q, k, v, window=(2, -1))[:, 5:],
                             atol=1e-5)
