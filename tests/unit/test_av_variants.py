"""The paper's ablations (`model.variant`): structure, parameter counts, what each sees, and
the cascaded variant's two-stage sampling."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avflow_jax.inference import sampling
from avflow_jax.models import av_config
from avflow_jax.models import dit
from avflow_jax.models import head_vae as head_vae_lib
from avflow_jax.training import config_validation
from configs import tiny

D, H, L = 32, 64, 2
DIMS = av_config.AVDims(face=10, head_latent=4, audio=6, cond=5, participant=2)


def _model(variant):
  c = tiny.get_config().model
  c.variant = variant
  c.num_layers, c.d_model, c.hidden_dim, c.num_heads = L, D, H, 2
  return dit.make_av_model(c, DIMS)


def _params(model):
  return nn.unbox(dit.init_av_params(model, DIMS, jax.random.PRNGKey(0)))


def _count(tree):
  return sum(x.size for x in jax.tree.leaves(tree))


def _linear(n_in, n_out):
  return n_in * n_out + n_out


# One DiT block: two adaLN modulations (3 d each), fused qkv, attention output, feed-forward.
BLOCK = 2 * _linear(D, 3 * D) + _linear(D, 3 * D) + _linear(D, D) + _linear(D, H) + _linear(H, D)
TIME = _linear(D // 4, D) + _linear(D, D)  # Fourier features (d/8 sin + d/8 cos) and an MLP.


def _tower(n_in, n_out):
  return _linear(n_in, D) + TIME + L * BLOCK + _linear(D, n_out)


@pytest.mark.parametrize("variant,expected", [
    # Two towers sharing one time embedding, a Linear(2d, 2d) fusion after every block pair.
    ("av_flow", _tower(DIMS.visual + DIMS.cond, DIMS.visual) + _tower(DIMS.audio + DIMS.cond,
                                                                      DIMS.audio)
     - TIME + L * _linear(2 * D, 2 * D)),
    ("separate", _tower(DIMS.visual + DIMS.cond, DIMS.visual)
     + _tower(DIMS.audio + DIMS.cond, DIMS.audio)),
    ("shared", _tower(DIMS.visual + DIMS.audio + DIMS.cond, DIMS.visual + DIMS.audio)),
    # The visual stage sees the mel and the participant, not the tokens.
    ("cascaded", _tower(DIMS.visual + DIMS.audio + DIMS.participant, DIMS.visual)
     + _tower(DIMS.audio + DIMS.cond, DIMS.audio)),
])
def test_parameter_counts(variant, expected):
  assert _count(_params(_model(variant))) == expected


def _inputs(seed=0):
  k = jax.random.split(jax.random.PRNGKey(seed), 4)
  return (jax.random.normal(k[0], (1, 24, DIMS.visual)), jax.random.normal(k[1], (1, 24, DIMS.audio)),
          jax.random.normal(k[2], (1, 24, DIMS.cond)), jnp.array([0.3]),
          jax.random.normal(k[3], (1, 24, DIMS.audio)))


def _apply(model, params, xv, xa, cond, t, mel):
  extra = {"audio_cond": mel} if dit.is_cascaded(model) else {}
  # Non-zero adaLN gates, so every block passes its inputs on (zero-init blocks are identities).
  params = jax.tree.map(lambda p: p + 0.05, params)
  return model.apply({"params": params}, xv, xa, cond, t, **extra)


@pytest.mark.parametrize("variant,connected", [("av_flow", True), ("separate", False),
                                               ("shared", True)])
def test_only_joint_variants_pass_audio_to_visual(variant, connected):
  model = _model(variant)
  params = _params(model)
  xv, xa, cond, t, mel = _inputs()
  v1, a1 = _apply(model, params, xv, xa, cond, t, mel)
  v2, a2 = _apply(model, params, xv, xa + 1.0, cond, t, mel)
  assert (float(jnp.abs(v1 - v2).max()) > 1e-4) == connected
  assert float(jnp.abs(a1 - a2).max()) > 1e-4


def test_cascaded_visual_stage_sees_mel_and_participant_not_tokens():
  model = _model("cascaded")
  params = _params(model)
  xv, xa, cond, t, mel = _inputs()
  v, a = _apply(model, params, xv, xa, cond, t, mel)
  tokens_changed = cond.at[..., :DIMS.cond - DIMS.participant].add(1.0)
  v_tok, a_tok = _apply(model, params, xv, xa, tokens_changed, t, mel)
  np.testing.assert_allclose(v_tok, v, atol=1e-6)  # Speech -> motion: tokens do not reach it.
  assert float(jnp.abs(a_tok - a).max()) > 1e-4
  v_mel, a_mel = _apply(model, params, xv, xa, cond, t, mel + 1.0)
  assert float(jnp.abs(v_mel - v).max()) > 1e-4
  np.testing.assert_allclose(a_mel, a, atol=1e-6)  # The audio stage never sees the mel cond.
  v_part, _ = _apply(model, params, xv, xa, cond.at[..., -1].add(1.0), t, mel)
  assert float(jnp.abs(v_part - v).max()) > 1e-4
  with pytest.raises(ValueError, match="audio_cond"):
    model.apply({"params": params}, xv, xa, cond, t)


def test_cascaded_sampling_conditions_the_visual_stage_on_its_own_mel():
  dims = av_config.AVDims(face=10, head_latent=8, audio=6, cond=5)
  c = tiny.get_config().model
  c.variant, c.num_layers, c.d_model, c.hidden_dim, c.num_heads = "cascaded", L, D, H, 2
  model = dit.make_av_model(c, dims)
  params = jax.tree.map(lambda p: p + 0.05,
                        nn.unbox(dit.init_av_params(model, dims, jax.random.PRNGKey(0))))
  vae = head_vae_lib.HeadVAE(input_dim=7, ff_dim=32)
  vae_params = vae.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, 7)))["params"]
  stats = {k: (jnp.zeros(n), jnp.ones(n)) for k, n in
           {"tokens": 5, "mel": 6, "face": 10, "head": 7}.items()}
  all_params = {"av": params, "head_vae": vae_params, "stats": stats}
  tokens = jax.random.normal(jax.random.PRNGKey(2), (1, 20, 5))
  x0 = jax.random.normal(jax.random.PRNGKey(3), (1, 20, dims.visual + dims.audio))
  out = sampling.sample(model, vae, all_params, tokens, None, num_steps=4, x0=x0)
  mel = sampling.solve_audio_stage(model, params, tokens, x0[..., dims.visual:], 4)
  np.testing.assert_allclose(out["mel"], mel, atol=1e-5)
  vis = sampling.solve_visual_stage(model, params, tokens, mel, x0[..., :dims.visual], 4)
  np.testing.assert_allclose(out["face"], vis[..., :10], atol=1e-5)
  np.testing.assert_allclose(out["head_latent"], vis[..., 10:], atol=1e-5)


@pytest.mark.parametrize("change,field", [
    ({"variant": "joint"}, "model.variant"),
    ({"variant": "shared", "scan_layers": True}, "model.scan_layers"),
    ({"variant": "cascaded", "fusion": False}, "model.fusion"),
])
def test_bad_variant_settings_name_the_field(change, field):
  config = tiny.get_config()
  config.model.update(change)
  with pytest.raises(ValueError, match=field.replace(".", r"\.")):
    config_validation._validate_av_model(config.model)  # pylint: disable=protected-access
