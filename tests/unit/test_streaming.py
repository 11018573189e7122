"""The streaming sampler: exact mode equals the offline sampler whatever the chunking, the
look-ahead it reports is what it waits for, low-latency mode is deterministic, memory stays
bounded, and misuse fails with one line."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avflow_jax.core import flow
from avflow_jax.inference import sampling
from avflow_jax.inference import streaming
from avflow_jax.models import av_config
from avflow_jax.models import dit
from avflow_jax.models import head_vae
from avflow_jax.models import layer_cut
from configs import tiny

pytestmark = pytest.mark.usefixtures("fast_compile")  # Tiny programs: compile >> run.

T = 160
CHUNKINGS = ([T], [5, 1, 30, 100, 24], [16] * 10)


def _perturbed(tree, seed, scale=0.03):
  """Random weights everywhere (adaLN-zero starts every block as the identity)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: (np.asarray(x) + scale * rng.normal(size=x.shape))
                      .astype(np.float32), tree)


def _stats(participant: bool):
  ones = lambda n, v=1.0: np.full(n, v, np.float32)
  stats = {"tokens": (ones(29, 0.0), ones(29)), "mel": (ones(80, -5.0), ones(80, 2.0)),
           "face": (ones(256, 0.0), ones(256)),
           "head": (np.array([1, 0, 0, 0, 0, 0, 0], np.float32), ones(7, 0.1))}
  if participant:
    stats["participant"] = (ones(87, 0.5), ones(87, 2.0))
  return stats


def _setup(variant="av_flow", participant=False, vae_window=(3, 2), token_lookahead=0):
  cfg = tiny.get_config().model
  cfg.variant = variant
  cfg.token_lookahead = token_lookahead
  dims = av_config.AVDims(face=256, head_latent=8, audio=80, cond=29 + 87 * participant,
                          participant=87 * participant)
  model = dit.make_av_model(cfg, dims)
  vae = head_vae.HeadVAE(input_dim=7, ff_dim=32, window=vae_window)
  av = nn.unbox(jax.jit(lambda k: dit.init_av_params(model, dims, k))(jax.random.PRNGKey(0)))
  vp = jax.jit(vae.init)(jax.random.PRNGKey(1), jnp.zeros((1, 8, 7)))["params"]
  params = {"av": _perturbed(av, 2), "head_vae": _perturbed(vp, 3), "stats": _stats(participant)}
  return model, vae, params


def _inputs(participant=False, t=T):
  tok = np.asarray(jax.random.normal(jax.random.PRNGKey(5), (t, 29)))
  part = np.asarray(jax.random.normal(jax.random.PRNGKey(6), (t, 87))) if participant else None
  return tok, part


def _stream(model, vae, params, tok, part, sizes, **kw):
  st = streaming.StreamingSampler(model, vae, params, seed=7, chunk_frames=16,
                                  uses_participant=part is not None, **kw)
  outs, i = [], 0
  for n in sizes:
    outs.append(st.push(tok[i:i + n], None if part is None else part[i:i + n]))
    i += n
  outs.append(st.close())
  return st, {k: np.concatenate([o[k] for o in outs]) for k in streaming.STREAMS}


@pytest.mark.parametrize("variant,participant,ahead", [("av_flow", False, 0),
                                                        ("shared", True, 5)])
def test_exact_mode_equals_the_offline_sampler_for_any_chunking(variant, participant, ahead):
  model, vae, params = _setup(variant, participant, token_lookahead=ahead)
  tok, part = _inputs(participant)
  off = jax.device_get(sampling.sample(model, vae, params, tok[None], jax.random.PRNGKey(7),
                                       participant=None if part is None else part[None]))
  assert np.abs(off["mel"][0] - sampling.denormalise(
      flow.initial_noise(jax.random.PRNGKey(7), 1, T, 344)[0, :, 264:],
      params["stats"], "mel")).max() > 0.1  # The network moves the sample away from noise.
  for sizes in CHUNKINGS:
    st, got = _stream(model, vae, params, tok, part, sizes)
    assert st.exact and st.frames_out == T
    n30 = max(1, int(round(T * 30.0 / 86.1328125)))
    assert got["face_30fps"].shape == (n30, 256) and got["head_30fps"].shape == (n30, 7)
    for k in ("mel", "face", "head", "head_latent"):
      np.testing.assert_allclose(got[k], off[k][0], atol=1e-5, err_msg=f"{k} {sizes}")
  # Without the layer-wise cache (each chunk's whole receptive field re-run): the same.
  _, got = _stream(model, vae, params, tok, part, CHUNKINGS[1], cache_layers=False)
  np.testing.assert_allclose(got["mel"], off["mel"][0], atol=1e-5)


def test_lookahead_is_what_the_stream_waits_for():
  model, vae, params = _setup()
  tok, _ = _inputs()
  left, right = streaming.receptive_field(model.windows)
  assert (left, right) == (8, 4)  # Tiny: (4, 2) in each of two layers.
  st = streaming.StreamingSampler(model, vae, params, chunk_frames=16)
  assert st.lookahead_frames == 8 * right + 2  # K × ΣR + the decoder's right window.
  for n in (10, 30, 60, 100):
    st.push(tok[st.frames_in:n])
    assert st.frames_out == max(0, n - st.lookahead_frames)  # Frame-accurate.
  ahead = streaming.StreamingSampler(_setup(token_lookahead=6)[0], vae, params)
  assert ahead.lookahead_frames == st.lookahead_frames + 6  # Tokens read 6 frames ahead.
  for n in (10, 30, 60, 100):
    ahead.push(tok[ahead.frames_in:n])
    assert ahead.frames_out == max(0, n - ahead.lookahead_frames)
  low = streaming.StreamingSampler(model, vae, params, chunk_frames=4, lag_frames=1)
  assert low.lookahead_frames < st.lookahead_frames
  for n in (10, 30, 60, 100):
    low.push(tok[low.frames_in:n])
    assert n - low.lookahead_frames <= low.frames_out <= n


def test_low_latency_mode_is_deterministic_and_its_difference_is_small():
  model, vae, params = _setup()
  tok, _ = _inputs()
  off = jax.device_get(sampling.sample(model, vae, params, tok[None], jax.random.PRNGKey(7)))
  runs = [_stream(model, vae, params, tok, None, sizes, lag_frames=1)[1] for sizes in CHUNKINGS]
  for got in runs[1:]:
    for k in streaming.STREAMS:
      np.testing.assert_array_equal(got[k], runs[0][k], err_msg=k)
  diff = np.abs(runs[0]["mel"] - off["mel"][0]).max()
  assert 1e-4 < diff < 0.1 * np.abs(off["mel"][0]).max()


def test_memory_and_work_stay_bounded_on_a_long_stream():
  model, vae, params = _setup(vae_window=None)  # Full-attention decoder: a bounded context.
  tok, _ = _inputs(t=1200)
  st = streaming.StreamingSampler(model, vae, params, chunk_frames=16, head_context_frames=32)
  assert not st.exact
  held = []
  for i in range(0, 1200, 40):
    out = st.push(tok[i:i + 40])
    held.append(st.buffered_frames())
    if i == 0:
      programs = layer_cut._av_layer._cache_size()  # pylint: disable=protected-access
    assert np.isfinite(out["mel"]).all()
  assert max(held[5:]) <= held[4] + 40 and max(held) < 400  # No growth with the stream.
  assert st.frames_out + len(st.close()["mel"]) == 1200
  assert layer_cut._av_layer._cache_size() == programs  # One window shape: no recompile.


def test_misuse_fails_with_one_line():
  model, vae, params = _setup()
  tok, _ = _inputs()
  with pytest.raises(ValueError, match="lag_frames=9"):
    streaming.StreamingSampler(model, vae, params, lag_frames=9)
  with pytest.raises(ValueError, match="participant"):
    streaming.StreamingSampler(model, vae, params).push(tok, np.zeros((T, 87)))
  st = streaming.StreamingSampler(model, vae, params)
  st.close()
  with pytest.raises(ValueError, match="push after close"):
    st.push(tok)
  with pytest.raises(ValueError, match="config.model.windows"):
    streaming.receptive_field(((4, 2), (-1, 2)))
  cascaded, _, cparams = _setup("cascaded")
  with pytest.raises(ValueError, match="cascaded"):
    streaming.StreamingSampler(cascaded, vae, cparams)
  dyadic, dvae, dparams = _setup(participant=True)
  with pytest.raises(ValueError, match="participant"):
    streaming.StreamingSampler(dyadic, dvae, dparams, uses_participant=True).push(tok)


def _pushed(stream, x, sizes):
  out, i = [], 0
  for n in sizes:
    out.append(stream.push(x[i:i + n]))
    i += n
  return np.concatenate(out + [stream.close()])


def test_streamed_bigvgan_equals_whole_clip_vocoding(tmp_path):
  from avflow_jax.inference import vocoder  # pylint: disable=g-import-not-at-top
  from avflow_jax.models import bigvgan  # pylint: disable=g-import-not-at-top
  from tests import fixtures  # pylint: disable=g-import-not-at-top
  config = bigvgan.BigVGANConfig(upsample_initial_channel=16)  # The base kernels: its reach.
  path = str(tmp_path / "g.npz")
  np.savez(path, **fixtures.random_bigvgan_state_dict(config, 0, std=0.1))
  voc = vocoder.BigVGANVocoder(path, config)
  mel = (-5.0 + 2.0 * np.random.default_rng(0).normal(size=(200, 80))).astype(np.float32)
  whole = vocoder.mel_to_audio(voc, mel)
  for sizes in ([200], [7, 50, 143]):
    stream = vocoder.StreamingVocoder(voc, chunk_frames=32)
    y = _pushed(stream, mel, sizes)
    assert y.shape == whole.shape
    keep = (200 - stream.context) * 256  # The whole-clip call pads its own end otherwise.
    np.testing.assert_allclose(y[:keep], whole[:keep], atol=1e-4, err_msg=str(sizes))


def test_streamed_griffin_lim_does_not_depend_on_the_pushes():
  from avflow_jax.inference import vocoder  # pylint: disable=g-import-not-at-top
  voc = vocoder.GriffinLimVocoder(n_iter=4)
  mel = (-5.0 + 2.0 * np.random.default_rng(1).normal(size=(120, 80))).astype(np.float32)
  ys = [_pushed(vocoder.StreamingVocoder(voc, chunk_frames=32), mel, sizes)
        for sizes in ([120], [3, 40, 77])]
  assert ys[0].shape == (120 * 256,) and np.isfinite(ys[0]).all() and np.abs(ys[0]).max() > 0
  np.testing.assert_array_equal(ys[0], ys[1])
  with pytest.raises(ValueError, match="one stream"):
    vocoder.StreamingVocoder(voc).push(mel[None])


def test_30fps_streams_equal_the_offline_resampling():
  from avflow_jax.core import align  # pylint: disable=g-import-not-at-top
  from avflow_jax.core import constants as C  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(2).normal(size=(301, 3)).astype(np.float32)
  n30 = max(1, int(round(301 * 30.0 / C.FRAME_RATE)))
  ref = align.resample_stream(x, C.FRAME_RATE, n30, dst_rate=30.0)
  for sizes in ([301], [1, 2, 3, 95, 200], [7] * 43):
    fps, out, i = streaming.FpsStream(), [], 0
    for k, n in enumerate(sizes):
      out.append(fps.push(x[i:i + n], closed=k == len(sizes) - 1))
      i += n
    np.testing.assert_allclose(np.concatenate(out), ref, atol=1e-6, err_msg=str(sizes))


def test_tokens_read_ahead_hold_each_rows_last_real_frame():
  x = np.arange(2 * 6, dtype=np.float32).reshape(2, 6, 1)
  got = np.asarray(av_config.shift_ahead(x, 2, np.array([6, 3])))[..., 0]
  np.testing.assert_array_equal(got[0], [2, 3, 4, 5, 5, 5])
  np.testing.assert_array_equal(got[1][:3], [8, 8, 8])  # Row 1 has 3 real frames: 6, 7, 8.
  np.testing.assert_array_equal(av_config.shift_ahead(x, 0), x)
