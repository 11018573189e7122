"""The head VAE's blocked attention: equal to the full-attention module, same params, linear memory."""

from unittest import mock

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from avflow_jax.models import head_vae


def _dense_attention(query, key, value, mask=None, *, frame_mask=None, **unused):
  """The layer's attention as it was before blocked attention: flax's, with a T x T mask."""
  del mask, unused
  full = None if frame_mask is None else nn.make_attention_mask(frame_mask, frame_mask)
  return nn.dot_product_attention(query, key, value, mask=full)


class _ReferenceVAE(head_vae.HeadVAE):
  """HeadVAE whose layers attend densely (the same modules, so the same params)."""

  def __call__(self, *args, **kwargs):
    with mock.patch.object(head_vae, "blocked_attention", _dense_attention):
      return super().__call__(*args, **kwargs)

  def encode(self, *args, **kwargs):
    with mock.patch.object(head_vae, "blocked_attention", _dense_attention):
      return super().encode(*args, **kwargs)

  def decode(self, *args, **kwargs):
    with mock.patch.object(head_vae, "blocked_attention", _dense_attention):
      return super().decode(*args, **kwargs)


def _mask(b, t):
  m = np.ones((b, t), bool)
  m[0, int(t * 0.7):] = False  # A padded tail (as sampling's buckets).
  if b > 1:
    m[1, t // 5:t // 5 + 17] = False  # A hole (as invalid frames in training crops).
  return jnp.asarray(m)


@pytest.mark.parametrize("t,block,scores", [(300, 64, 1024), (301, 50, 1024), (3000, 64, None)])
def test_blocked_decode_equals_full_attention(t, block, scores, monkeypatch):
  if scores is not None:  # Small score budget: several query blocks at a small T.
    monkeypatch.setattr(head_vae, "BLOCK_SCORES", scores)
  new = head_vae.HeadVAE(ff_dim=32, attention_block=block)
  ref = _ReferenceVAE(ff_dim=32)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, t, 7))
  params = ref.init(jax.random.PRNGKey(0), x[:, :16])["params"]
  # The same names, shapes and initial values: checkpoints of the reference module load.
  new_params = new.init(jax.random.PRNGKey(0), x[:, :16])["params"]
  assert jax.tree.structure(new_params) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(new_params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  assert set(params["dec_layer"]["attn"]) == {"query", "key", "value", "out"}

  z = jax.random.normal(jax.random.PRNGKey(2), (2, t, 8))
  for mask in (None, _mask(2, t)):
    got = new.apply({"params": params}, z, mask, method=new.decode)
    want = ref.apply({"params": params}, z, mask, method=ref.decode)
    np.testing.assert_allclose(got, want, atol=1e-5)  # Every frame, the masked ones included.
    got_mu = new.apply({"params": params}, x, mask, method=new.encode)[0]
    want_mu = ref.apply({"params": params}, x, mask, method=ref.encode)[0]
    np.testing.assert_allclose(got_mu, want_mu, atol=1e-5)


def test_gradients_equal_full_attention(monkeypatch):
  monkeypatch.setattr(head_vae, "BLOCK_SCORES", 512)
  new, ref = head_vae.HeadVAE(ff_dim=32), _ReferenceVAE(ff_dim=32)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 200, 7))
  mask = _mask(2, 200)
  params = ref.init(jax.random.PRNGKey(0), x)["params"]

  def loss(model):
    def f(p):
      recon, mu, log_var = model.apply({"params": p}, x, jax.random.PRNGKey(3), mask)
      return head_vae.vae_loss(recon, x, mu, log_var, mask.astype(jnp.float32))[0]
    return jax.jit(jax.grad(f))(params)  # Eager dispatch of every op costs ~30 s.

  for a, b in zip(jax.tree.leaves(loss(new)), jax.tree.leaves(loss(ref))):
    np.testing.assert_allclose(a, b, atol=1e-5)


def _dense_band(q, k, v, frame_mask, window):
  t = q.shape[1]
  i, j = np.arange(t)[:, None], np.arange(t)[None, :]
  band = jnp.asarray((j >= i - window[0]) & (j <= i + window[1]))
  mask = nn.make_attention_mask(frame_mask, frame_mask).astype(bool) & band[None, None]
  return nn.dot_product_attention(q, k, v, mask=mask)


@pytest.mark.parametrize("window", [(0, 0), (3, 5), (17, 2), (64, 64), (500, 500)])
def test_windowed_attention_equals_band_masked_dense(window):
  b, t, h, d = 2, 150, 2, 8
  q, k, v = (jax.random.normal(jax.random.PRNGKey(s), (b, t, h, d)) for s in range(3))
  mask = _mask(b, t)
  got = head_vae.blocked_attention(q, k, v, frame_mask=mask, window=window, block=32)
  want = _dense_band(q, k, v, mask, window)
  valid = np.asarray(mask)  # Masked queries see no key: their value is unspecified.
  np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=1e-5)


def test_window_config():
  c = head_vae.default_config()
  assert c.window is None  # Full attention, as the official model.
  assert head_vae.from_config(ml_collections.ConfigDict({"vae": c}), 7).window is None
  old = c.to_dict()
  del old["window"]  # A run saved before the field existed.
  assert head_vae.from_config(ml_collections.ConfigDict({"vae": old}), 7).window is None
  c.window = (8, 4)
  assert head_vae.from_config(ml_collections.ConfigDict({"vae": c}), 7).window == (8, 4)
  assert head_vae.parse_window([8, 4]) == (8, 4)  # As config.json stores it.
  for bad in ((-1, 2), (1,), (1.5, 2), "ab"):
    with pytest.raises(ValueError, match="config.vae.window"):
      head_vae.parse_window(bad)
  windowed = head_vae.HeadVAE(ff_dim=32, window=(8, 4))
  full = head_vae.HeadVAE(ff_dim=32)
  z = jax.random.normal(jax.random.PRNGKey(2), (1, 100, 8))
  params = full.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 7)))["params"]
  assert (jax.tree.structure(windowed.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 7))))
          == jax.tree.structure({"params": params}))
  a = windowed.apply({"params": params}, z, method=windowed.decode)
  b = full.apply({"params": params}, z, method=full.decode)
  assert np.isfinite(a).all() and not np.allclose(a, b)


def _decode_temp_bytes(model, t, with_mask=True):
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 7)))["params"]
  z = jax.ShapeDtypeStruct((1, t, 8), jnp.float32)
  mask = jax.ShapeDtypeStruct((1, t), jnp.bool_) if with_mask else None
  f = jax.jit(lambda p, z, m: model.apply({"params": p}, z, m, method=model.decode))
  return f.lower(params, z, mask).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("window", [None, (16, 8)])
def test_decode_memory_is_linear_in_length(window):
  model = head_vae.HeadVAE(ff_dim=256, window=window)
  t = 8192
  small, large = _decode_temp_bytes(model, t), _decode_temp_bytes(model, 4 * t)
  # Quadratic (the T x T scores of the reference) would be ~16x; linear is ~4x.
  assert large / small < 6, (small, large)
  ref = _decode_temp_bytes(_ReferenceVAE(ff_dim=256), t)
  assert ref > 4 * t * t  # The reference holds the float32 T x T scores.
  assert small < ref / 8
