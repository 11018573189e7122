"""The official text-to-tokens checkpoint on `TextToTokens`: fixtures written by the official code.

tests/data/official/text_to_tokens_small.pth is a small Matcha-TTS (29 features) saved with
`torch.save(model.state_dict())`; text_to_tokens_small_io.npz holds its eval-mode outputs,
channels first (B, C, T) except `tokens` (B, T, 29). See models/official_t2t_keys.py for what
differs by design (padded decoder inputs, dropout at official inference); the model's
`official_padding` option reproduces the official padded decoder.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avflow_jax.core import constants
from avflow_jax.core import torch_reader
from avflow_jax.core import torch_writer
from avflow_jax.inference import buckets
from avflow_jax.inference import text_tokens
from avflow_jax.models import official_t2t_keys as keys
from avflow_jax.models import t2t_loss
from avflow_jax.models import t2t_synthesis
from avflow_jax.models import text_to_tokens as t2t
from configs import text_to_tokens as t2t_config

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "official")
ENC_TOL = 1e-5  # encoder mu / logw, max abs.
DEC_TOL = 1e-4  # estimator velocity and the final tokens, max abs.


pytestmark = pytest.mark.usefixtures("fast_compile")


def _cl(x):
  """Channels-first (B, C, T) -> channels-last (B, T, C)."""
  return np.transpose(np.asarray(x, np.float32), (0, 2, 1))


@pytest.fixture(scope="module")
def official():
  state = torch_reader.read_torch_state_dict(os.path.join(DATA, "text_to_tokens_small.pth"))
  io = dict(np.load(os.path.join(DATA, "text_to_tokens_small_io.npz")))
  cfg = keys.model_config_from_official(state)
  params, mean, std = keys.params_from_official(state, cfg)
  return state, io, cfg, t2t.make_model(cfg), params, mean, std


def _encode(model, params, ids, ids_len):
  fn = jax.jit(lambda p, i, n: model.apply({"params": p}, i, n, False,
                                           method=t2t.TextToTokens.encode))
  return fn(params, jnp.asarray(ids, jnp.int32), jnp.asarray(ids_len, jnp.int32))


def _max_err(a, b):
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def test_config_and_tree_match_the_fixture_model(official):
  state, _, cfg, model, params, mean, std = official
  with open(os.path.join(DATA, "provenance.json")) as f:
    ref = json.load(f)["text_to_tokens_config"]
  enc, dp, dec = (ref["encoder"]["encoder_params"], ref["encoder"]["duration_predictor_params"],
                  ref["decoder"])
  assert (cfg["n_feats"], cfg["enc_channels"], cfg["enc_filters"], cfg["enc_heads"],
          cfg["enc_layers"], cfg["enc_kernel"], cfg["dp_filters"], cfg["dp_kernel"]) == (
              enc["n_feats"], enc["n_channels"], enc["filter_channels"], enc["n_heads"],
              enc["n_layers"], enc["kernel_size"], dp["filter_channels_dp"], dp["kernel_size"])
  assert (cfg["dec_channels"], cfg["dec_heads"], cfg["dec_head_dim"], cfg["dec_blocks"],
          cfg["dec_mid_blocks"]) == (tuple(dec["channels"]), dec["num_heads"],
                                     dec["attention_head_dim"], dec["n_blocks"],
                                     dec["num_mid_blocks"])
  assert (cfg["n_vocab"], cfg["prenet_kernel"], cfg["prenet_layers"]) == (178, 5, 3)
  assert (cfg["enc_dropout"], cfg["prenet_dropout"], cfg["dp_dropout"], cfg["dec_dropout"],
          cfg["sigma_min"]) == (0.1, 0.5, 0.1, 0.05, ref["cfm"]["sigma_min"])
  # The statistics are the file's float32 buffers, not the constants.
  assert mean == cfg["token_mean"] == float(state["mean"])
  assert std == cfg["token_std"] == float(state["std"])
  np.testing.assert_allclose([mean, std], [ref["data_statistics"]["mean"],
                                           ref["data_statistics"]["std"]], rtol=1e-6)
  # Every field of the project's model config but `official_padding` (left at its default).
  assert set(cfg) == set(t2t_config.model_config()) - {"official_padding"}
  # Same tree and shapes as init_params: 239 leaves, 262,651 values, nothing left at init.
  init = jax.eval_shape(lambda: t2t.init_params(model, jax.random.PRNGKey(0), 8, 16))
  assert jax.tree.structure(init) == jax.tree.structure(params)
  assert jax.tree.map(lambda s: s.shape, init) == jax.tree.map(np.shape, params)
  leaves = jax.tree.leaves(params)
  assert len(leaves) == 239 == len(state) - 2
  assert sum(x.size for x in leaves) == 262_651
  assert all(x.dtype == np.float32 for x in leaves)


def test_encoder_and_durations_match(official):
  _, io, _, model, params, _, _ = official
  # One batch: the two utterances (each unpadded at the symbol level; the second, 23 symbols,
  # padded to 25 here) and the fixture's padded batch of two (lengths 25, 19).
  ids = np.zeros((4, 25), np.int64)
  ids[0], ids[1, :23], ids[2:] = io["ids"][0], io["pad_ids"][0], io["batch_ids"]
  lens = np.array([25, 23, *io["batch_ids_len"]])
  assert io["pad_ids"].shape == (1, 23) and tuple(io["batch_ids_len"]) == (25, 19)
  mu, logw, mask = _encode(model, params, ids, lens)
  w_ceil, total = t2t_synthesis.durations(logw, mask, 1.0)
  mu, logw, mask, w_ceil = map(np.asarray, (mu, logw, mask[..., 0], w_ceil))
  ref = [(io["mu_x"], io["logw"], io["x_mask"]), (io["pad_mu_x"], io["pad_logw"], io["pad_x_mask"]),
         (io["batch_mu_x"][:1], io["batch_logw"][:1], io["batch_x_mask"][:1]),
         (io["batch_mu_x"][1:], io["batch_logw"][1:], io["batch_x_mask"][1:])]
  for b, (ref_mu, ref_logw, ref_mask) in enumerate(ref):
    n = lens[b]  # compared on valid symbols.
    np.testing.assert_array_equal(mask[b, :ref_mask.shape[-1]], ref_mask[0, 0])
    assert _max_err(mu[b, :n], _cl(ref_mu)[0, :n]) <= ENC_TOL, b
    assert _max_err(logw[b, :n], ref_logw[0, 0, :n]) <= ENC_TOL, b
  # Durations of the two utterances: exact.
  for b, pre in enumerate(("", "pad_")):
    np.testing.assert_array_equal(w_ceil[b, :lens[b]], io[pre + "w_ceil"][0, 0])
    assert int(total[b]) == int(io[pre + "y_length"])


def test_estimator_matches_unpadded(official):
  _, io, _, model, params, _, _ = official
  t = jnp.full((1,), io["estimator_t"], jnp.float32)
  fn = jax.jit(lambda p, x, mask, mu: model.apply({"params": p}, x, mask, mu, t, False,
                                                  method=t2t.TextToTokens.velocity))

  def velocity(x, mask, mu):
    return fn(params, *(jnp.asarray(_cl(a)) for a in (x, mask, mu)))

  # One call inside the sampler (z, y_mask, mu_y at t = 0.37) and the estimator alone.
  assert _max_err(velocity(io["z"], io["y_mask"], io["mu_y"]), _cl(io["estimator_v"])) <= DEC_TOL
  assert _max_err(velocity(io["est_x"], io["est_mask_full"], io["est_mu"]),
                  _cl(io["est_v_full"])) <= DEC_TOL


def test_synthesis_replays_official_tokens_from_its_noise(official):
  _, io, _, model, params, _, _ = official
  n = int(io["y_length"])
  assert int(io["y_max_length_padded"]) == n  # this utterance needs no padding.
  np.testing.assert_allclose(io["t_span"], np.linspace(0, 1, 11), atol=1e-7)
  tokens, lengths = t2t_synthesis.synthesize(
      params, model, jnp.asarray(io["ids"], jnp.int32), jnp.asarray(io["ids_len"], jnp.int32),
      jax.random.PRNGKey(0), n_steps=int(io["n_timesteps"]), length_scale=1.0, max_frames=n,
      x0=jnp.asarray(_cl(io["z"])))  # z is already randn * temperature.
  assert int(lengths[0]) == n
  assert _max_err(tokens, io["tokens"]) <= DEC_TOL


def _velocity_fn(model, t):
  """A jitted channels-first estimator call: (params, x, mask, mu) -> (B, T, F) velocity."""
  fn = jax.jit(lambda p, x, mask, mu: model.apply(
      {"params": p}, x, mask, mu, jnp.full((1,), t, jnp.float32), False,
      method=t2t.TextToTokens.velocity))
  return lambda p, *a: fn(p, *(jnp.asarray(_cl(x)) for x in a))


def test_official_padding_estimator_matches_padded_inputs(official):
  _, io, _, model, params, _, _ = official
  on = model.clone(official_padding=True)
  cases = [("est_x", "est_mask_pad", "est_mu", "est_v_pad"),  # frames 13-15 padded.
           ("pad_z", "pad_y_mask", "pad_mu_y", "pad_estimator_v"),  # 65 of 68 frames.
           ("est_x", "est_mask_full", "est_mu", "est_v_full")]  # no padding: still equal.
  for m, tol_off in ((on, None), (model, 0.05)):
    velocity = _velocity_fn(m, io["estimator_t"])
    for x, mask, mu, ref in cases:
      mu_in = io[mu] * io[mask]  # as the fixture fed it (mu_y is already 0 on padding).
      err = _max_err(velocity(params, io[x], io[mask], mu_in), _cl(io[ref]))
      if tol_off is None or mask == "est_mask_full":
        assert err <= DEC_TOL, (m.official_padding, ref, err)
      else:  # the default masks padding by design: far from the official padded output.
        assert err > tol_off, (ref, err)


def test_official_padding_synthesis_replays_the_padded_utterance(official):
  _, io, _, model, params, _, _ = official
  on = model.clone(official_padding=True)
  n, n_pad = int(io["pad_y_length"]), int(io["pad_y_max_length_padded"])
  assert (n, n_pad) == (65, 68) and text_tokens.synthesis_frames(n, on) == n_pad
  assert text_tokens.synthesis_frames(n, model) == buckets.bucket_frames(n)
  z = _cl(io["pad_z"])  # (1, 68, 29), randn * temperature over the official padded length.
  # max_frames 68 as tokens_from_ids asks; 65 is rounded up to the same decoder grid (its 3
  # missing noise frames are padding, which never reaches the output).
  for max_frames in (n_pad, n):
    tokens, lengths = t2t_synthesis.synthesize(
        params, on, jnp.asarray(io["pad_ids"], jnp.int32), jnp.asarray([io["pad_ids"].shape[1]]),
        jax.random.PRNGKey(0), n_steps=int(io["n_timesteps"]), length_scale=1.0,
        max_frames=max_frames, x0=jnp.asarray(z[:, :max_frames]))
    assert tokens.shape == (1, max_frames, 29) and int(lengths[0]) == n
    assert _max_err(tokens[:, :n], io["pad_tokens"]) <= DEC_TOL, max_frames
    assert float(jnp.abs(tokens[:, n:]).max(initial=0.0)) == 0.0


def test_official_padding_is_an_off_by_default_bool():
  cfg = t2t_config.model_config(tiny=True)
  assert cfg.official_padding is False and t2t.TextToTokens().official_padding is False
  old = {k: v for k, v in cfg.to_dict().items() if k != "official_padding"}
  assert t2t.make_model(old) == t2t.make_model(cfg)  # runs saved before the field: off.
  assert t2t.make_model(dict(old, official_padding=True)).official_padding is True
  with pytest.raises(ValueError, match="official_padding"):
    t2t.make_model(dict(old, official_padding="true"))


def test_round_trip_is_bit_exact(official, tmp_path):
  state, _, _, _, params, mean, std = official
  out = keys.official_from_params(params, mean, std)
  assert list(out) == list(state)  # the official key set, in the official order.
  for k, v in state.items():
    assert out[k].dtype == np.float32 and out[k].shape == v.shape, k
    assert out[k].tobytes() == v.tobytes(), k
  # ... and through a torch zip written without torch, read back by the restricted reader.
  path = str(tmp_path / "text_to_tokens.pth")
  torch_writer.write_torch_checkpoint(path, out)
  back = torch_reader.read_torch_state_dict(path)
  assert list(back) == list(state)
  assert all(back[k].tobytes() == state[k].tobytes() for k in state)


def _one_line_error(fn, *args):
  with pytest.raises(ValueError) as e:
    fn(*args)
  msg = str(e.value)
  assert "\n" not in msg
  return msg


@pytest.mark.parametrize("case", ["missing", "extra", "shape", "no_mean", "std_shape",
                                  "bad_std"])
def test_bad_state_dicts_name_the_key(official, case):
  state, _, cfg, *_ = official
  bad = dict(state)
  key = "decoder.estimator.up_blocks.0.1.0.attn1.to_k.weight"
  if case == "missing":
    del bad[key]
  elif case == "extra":
    key = "decoder.estimator.up_blocks.0.1.0.attn1.to_k.bias"
    bad[key] = np.zeros((32,), np.float32)
  elif case == "shape":
    bad[key] = np.zeros((32, 31), np.float32)
  elif case == "no_mean":
    key = "mean"
    del bad[key]
  elif case == "std_shape":
    key = "std"
    bad[key] = np.ones((1,), np.float32)
  else:
    key = "std"
    bad[key] = np.zeros((), np.float32)
  msg = _one_line_error(keys.params_from_official, bad, cfg)
  assert repr(key) in msg
  if case == "shape":
    assert "(32, 31)" in msg and "(32, 32)" in msg
  if case in ("no_mean", "std_shape", "bad_std"):  # read by the config reader as well.
    assert repr(key) in _one_line_error(keys.model_config_from_official, bad)


def test_config_reading_names_a_missing_key(official):
  state = dict(official[0])
  del state["encoder.proj_w.conv_1.weight"]
  assert "'encoder.proj_w.conv_1.weight'" in _one_line_error(keys.model_config_from_official,
                                                             state)
  state = dict(official[0])
  for k in [k for k in state if k.startswith("encoder.encoder.attn_layers.0.")]:
    del state[k]
  assert "encoder.encoder.attn_layers.0." in _one_line_error(keys.model_config_from_official,
                                                             state)


def test_export_names_a_bad_parameter(official):
  _, _, _, _, params, mean, std = official
  bad = jax.tree.map(lambda x: x, params)
  del bad["estimator"]["final_proj"]["bias"]
  assert "estimator/final_proj/bias" in _one_line_error(keys.official_from_params, bad, mean,
                                                        std)
  bad = jax.tree.map(lambda x: x, params)
  bad["estimator"]["final_proj"]["extra"] = np.zeros((3,), np.float32)
  assert "estimator/final_proj/extra" in _one_line_error(keys.official_from_params, bad, mean,
                                                         std)
  assert "'std'" in _one_line_error(keys.official_from_params, params, mean, 0.0)


def test_token_statistics_are_model_config_fields():
  cfg = t2t_config.model_config(tiny=True)
  assert (cfg.token_mean, cfg.token_std) == (constants.TOKEN_MEAN, constants.TOKEN_STD)
  # A run config saved before the fields existed still loads, with the official constants.
  old = {k: v for k, v in cfg.to_dict().items() if k not in ("token_mean", "token_std")}
  model = t2t.make_model(old)
  assert (model.token_mean, model.token_std) == (constants.TOKEN_MEAN, constants.TOKEN_STD)
  model = t2t.make_model(dict(old, token_mean=1, token_std=2.5))
  assert (model.token_mean, model.token_std) == (1.0, 2.5)
  y = np.array([3.5, -1.5], np.float32)
  np.testing.assert_allclose(t2t.normalise_tokens(y, model.token_mean, model.token_std),
                             [1.0, -1.0])
  np.testing.assert_allclose(t2t.denormalise_tokens(np.array([1.0, -1.0]), 1.0, 2.5), y)
  for bad in ({"token_std": 0.0}, {"token_std": -1.0}, {"token_mean": float("nan")},
              {"token_mean": "0"}):
    with pytest.raises(ValueError, match="token_"):
      t2t.make_model(dict(old, **bad))


def test_synthesis_and_loss_use_the_models_statistics(official):
  """Other statistics in the config change the output scale, as the run's config.json says."""
  _, io, _, model, params, mean, std = official
  other = model.clone(token_mean=mean + 1.5, token_std=2.0 * std)
  n = int(io["y_length"])
  tokens, _ = t2t_synthesis.synthesize(
      params, other, jnp.asarray(io["ids"], jnp.int32), jnp.asarray(io["ids_len"], jnp.int32),
      jax.random.PRNGKey(0), max_frames=n, x0=jnp.asarray(_cl(io["z"])))
  expected = (io["tokens"] - mean) / std * other.token_std + other.token_mean
  assert _max_err(tokens, expected) <= 2 * DEC_TOL
  # The training loss sees the same normalised tokens under both statistics.
  raw = np.asarray(io["tokens"], np.float32)
  batch = {"ids": io["ids"].astype(np.int32), "ids_len": io["ids_len"].astype(np.int32),
           "tokens": raw, "tokens_len": np.array([n], np.int32)}
  moved = dict(batch, tokens=(raw - mean) / std * other.token_std + other.token_mean)
  both = jax.jit(lambda p, b1, b2, r: (t2t_loss.loss_fn(p, b1, r, model, False)[1],
                                        t2t_loss.loss_fn(p, b2, r, other, False)[1]))
  ref, got = both(params, batch, moved, jax.random.PRNGKey(1))  # one compile for both.
  for k in ref:
    np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, err_msg=k)
