"""The layer cut of every streamable variant computes what the whole model computes."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from avflow_jax.models import av_config
from avflow_jax.models import dit
from avflow_jax.models import layer_cut
from avflow_jax.models import layer_layout
from configs import tiny

pytestmark = pytest.mark.usefixtures("fast_compile")

DIMS = av_config.AVDims(face=256, head_latent=8, audio=80, cond=29)
T = 40


def _model_and_params(variant, **model_kw):
  cfg = tiny.get_config().model
  cfg.variant = variant
  for k, v in model_kw.items():
    cfg[k] = v
  model = dit.make_av_model(cfg, DIMS)
  params = nn.unbox(dit.init_av_params(model, DIMS, jax.random.PRNGKey(0)))
  rng = np.random.default_rng(1)  # adaLN-zero starts every block as the identity: perturb.
  return model, jax.tree.map(lambda x: x + 0.05 * rng.normal(size=x.shape).astype(np.float32),
                             params)


@pytest.mark.parametrize("variant,kw", [("av_flow", {}),
                                        ("av_flow", {"fusion": False, "scan_layers": True}),
                                        ("separate", {}), ("shared", {})])
def test_layers_applied_in_order_equal_the_whole_model(variant, kw):
  model, params = _model_and_params(variant, **kw)
  if kw.get("scan_layers"):
    assert layer_layout.is_stacked(params)
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, T, DIMS.visual + DIMS.audio)).astype(np.float32)
  cond = rng.normal(size=(1, T, DIMS.cond)).astype(np.float32)
  t, valid = np.float32(0.375), 31  # Keys from frame 31 on are padding.
  vv, va = model.apply({"params": params}, x[..., :DIMS.visual], x[..., DIMS.visual:], cond,
                       np.full((1,), t), np.array([valid]))
  want = np.concatenate([vv, va], -1)[0, :valid]
  cut = layer_cut.cut(model)
  assert cut.windows == ((4, 2), (4, 2))
  h = cut.embed(params, x, cond)
  assert h.shape == (1, T, cut.hidden_width)
  for i in range(len(cut.windows)):
    h = cut.layer(i, cut.layer_params(params, i), h, t, np.int32(valid), np.int32(0), T)
  got = np.asarray(cut.readout(params, h))[0, :valid]
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert np.abs(want).max() > 0.1  # The blocks do something.


def test_cascaded_has_no_cut():
  model, _ = _model_and_params("cascaded")
  with pytest.raises(ValueError, match="cascaded"):
    layer_cut.cut(model)
