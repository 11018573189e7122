"""Text-to-tokens model: size, padding invariance, overfitting, synthesis, data pipeline."""

import json
import math
import os

from array_record.python import array_record_module
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from avflow_jax.core import constants
from avflow_jax.core import records
from avflow_jax.data import utterances
from avflow_jax.models import t2t_loss
from avflow_jax.models import t2t_synthesis
from avflow_jax.models import text_to_tokens as t2t
from configs import text_to_tokens as t2t_config

S, T = 16, 32  # padded symbols and frames of the tiny tests.


pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def tiny():
  model = t2t.make_model(t2t_config.get_config("tiny"))
  params = t2t.init_params(model, jax.random.key(0), S, T)
  return model, params


def _synthetic_batch(seed=0):
  """Token frames that are a fixed function of the symbol they belong to (learnable)."""
  rng = np.random.default_rng(seed)
  ids_len = np.array([10, 16, 7], np.int32)
  tokens_len = np.array([28, 32, 20], np.int32)
  protos = rng.normal(size=(178, 29)) * constants.TOKEN_STD + constants.TOKEN_MEAN
  ids = np.zeros((3, S), np.int32)
  tokens = np.zeros((3, T, 29), np.float32)
  for b in range(3):
    ids[b, :ids_len[b]] = rng.integers(1, 178, ids_len[b])
    dur = rng.multinomial(tokens_len[b] - ids_len[b], np.ones(ids_len[b]) / ids_len[b]) + 1
    tokens[b, :tokens_len[b]] = np.repeat(protos[ids[b, :ids_len[b]]], dur, axis=0)
  return {"ids": ids, "ids_len": ids_len, "tokens": tokens, "tokens_len": tokens_len}


def test_full_size_parameter_count():
  # Matcha-TTS reports 18.2M parameters with 80 mel features; with 29 token features the
  # input/output layers shrink. eval_shape only traces (no compile).
  def count(n_feats):
    model = t2t.TextToTokens(n_feats=n_feats)
    shapes = jax.eval_shape(lambda r: model.init(
        {"params": r}, jnp.zeros((1, 8), jnp.int32), jnp.array([8]),
        jnp.zeros((1, 16, n_feats)), jnp.ones((1, 16, 1)), jnp.zeros((1,))), jax.random.key(0))
    return sum(x.size for x in jax.tree.leaves(shapes))
  assert count(80) == 18_204_193
  assert count(29) == 17_972_347
  full = t2t.make_model(t2t_config.get_config())
  assert full == t2t.TextToTokens()  # the config reproduces the reference sizes.


def test_make_model_rejects_unknown_keys():
  cfg = t2t_config.model_config(tiny=True)
  cfg.unlocked = True
  with pytest.raises(ValueError, match="unknown keys.*unlocked"):
    t2t.make_model(cfg)


def test_padding_does_not_change_outputs(tiny):
  model, params = tiny

  @jax.jit
  def run(ids, ids_len, x, mask, mu_y, t):
    v = {"params": params}
    mu, logw, _ = model.apply(v, ids, ids_len, method=t2t.TextToTokens.encode)
    vel = model.apply(v, x, mask, mu_y, t, method=t2t.TextToTokens.velocity)
    return mu, logw, vel

  rng = np.random.default_rng(1)
  ids = jnp.asarray(rng.integers(1, 178, (2, S)), jnp.int32)
  ids_len = jnp.array([9, 16])
  frames = jnp.array([21, 32])
  mask = t2t.sequence_mask(frames, T)
  x = jnp.asarray(rng.normal(size=(2, T, 29)), jnp.float32) * mask
  mu_y = jnp.asarray(rng.normal(size=(2, T, 29)), jnp.float32) * mask
  t = jnp.array([0.3, 0.8])
  mu, logw, vel = run(ids, ids_len, x, mask, mu_y, t)
  # Junk in the padding, and more of it (13 frames: also changes the U-Net's own padding).
  pad = lambda a: jnp.pad(a, ((0, 0), (0, 13), (0, 0)), constant_values=7.0)
  mu2, logw2, vel2 = run(jnp.pad(ids, ((0, 0), (0, 8)), constant_values=5), ids_len, pad(x),
                         t2t.sequence_mask(frames, T + 13), pad(mu_y), t)
  for b in range(2):
    n, f = int(ids_len[b]), int(frames[b])
    np.testing.assert_allclose(mu2[b, :n], mu[b, :n], atol=1e-5)
    np.testing.assert_allclose(logw2[b, :n], logw[b, :n], atol=1e-5)
    np.testing.assert_allclose(vel2[b, :f], vel[b, :f], atol=2e-4)
    assert float(jnp.abs(vel2[b, f:]).max()) == 0.0
  assert float(jnp.abs(mu[0, 9:]).max()) == 0.0 and float(jnp.abs(logw[0, 9:]).max()) == 0.0


def test_tiny_model_overfits(tiny):
  model, params = tiny
  batch = _synthetic_batch()
  tx = optax.chain(optax.clip_by_global_norm(5.0), optax.adam(3e-3))
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, rng):
    grads, metrics = jax.grad(t2t_loss.loss_fn, has_aux=True)(params, batch, rng, model, True)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  history = []
  for i in range(200):
    params, opt_state, metrics = step(params, opt_state, jax.random.key(i))
    history.append({k: float(v) for k, v in metrics.items()})
  first = history[0]  # the initial model.
  last = {k: np.mean([h[k] for h in history[-20:]]) for k in history[0]}
  # The prior NLL cannot go below 0.5 log(2 pi) (a perfect mean under N(mu, I)).
  floor = 0.5 * math.log(2 * math.pi)
  # Measured over two seeds (3 examples, Adam 3e-3, 200 steps): dur loss falls 50-70x,
  # prior - floor 5.6x, diff loss 2.3x (flow matching is noisy), total - floor 3.5x.
  assert last["dur_loss"] < first["dur_loss"] / 20, (first, last)
  assert last["prior_loss"] - floor < (first["prior_loss"] - floor) / 3, (first, last)
  assert last["diff_loss"] < first["diff_loss"] / 1.8, (first, last)
  assert last["loss"] - floor < (first["loss"] - floor) / 2.5, (first, last)
  assert all(np.isfinite(h["loss"]) for h in history)


def test_synthesize_shapes_and_determinism(tiny):
  model, params = tiny
  batch = _synthetic_batch()
  ids, ids_len = jnp.asarray(batch["ids"]), jnp.asarray(batch["ids_len"])
  run = lambda seed: t2t_synthesis.synthesize(params, model, ids, ids_len, jax.random.key(seed),
                                              n_steps=4, max_frames=48)
  tokens, lengths = run(0)
  tokens_again, lengths_again = run(0)
  tokens_other, _ = run(1)
  assert tokens.shape == (3, 48, 29) and tokens.dtype == jnp.float32
  assert lengths.shape == (3,) and lengths.dtype == jnp.int32
  np.testing.assert_array_equal(tokens, tokens_again)
  np.testing.assert_array_equal(lengths, lengths_again)
  assert not np.allclose(tokens, tokens_other)
  # Lengths are the summed ceil(exp(logw)) (clipped to the grid); frames past them are 0.
  _, logw, x_mask = model.apply({"params": params}, ids, ids_len,
                                method=t2t.TextToTokens.encode)
  want = np.clip(np.ceil(np.exp(np.asarray(logw))) * np.asarray(x_mask[..., 0]), 0, None)
  np.testing.assert_array_equal(lengths, np.clip(want.sum(1), 1, 48).astype(np.int32))
  for b in range(3):
    assert float(jnp.abs(tokens[b, lengths[b]:]).max(initial=0.0)) == 0.0
    assert float(jnp.abs(tokens[b, :lengths[b]]).min()) > 0.0
  # predict_lengths (used to size the output buffer) gives the same lengths, uncapped.
  np.testing.assert_array_equal(t2t_synthesis.predict_lengths(params, model, ids, ids_len),
                                np.maximum(want.sum(1), 1).astype(np.int32))


@pytest.mark.parametrize("length_scale", [1.0, 1.5])
def test_regulated_path_sums_to_length(length_scale):
  rng = np.random.default_rng(0)
  logw = jnp.asarray(rng.normal(size=(4, 12)), jnp.float32)
  x_mask = t2t.sequence_mask(jnp.array([12, 5, 1, 9]), 12)
  path, lengths = t2t_synthesis.regulate_lengths(logw * x_mask[..., 0], x_mask, length_scale, 40)
  path, lengths = np.asarray(path), np.asarray(lengths)
  np.testing.assert_array_equal(path.sum((1, 2)), lengths)
  assert (path.sum(1) <= 1).all()
  dur = np.ceil(np.exp(np.asarray(logw))) * np.asarray(x_mask[..., 0]) * length_scale
  np.testing.assert_array_equal(lengths, np.clip(np.floor(dur.sum(1)), 1, 40))
  if length_scale == 1.0:  # integer durations: each symbol gets exactly its frames.
    unclipped = dur.sum(1) <= 40
    np.testing.assert_array_equal(path.sum(2)[unclipped], dur[unclipped])


# ------------------------------------------------------------------------------ data


def _write_t2t_shards(out_dir):
  """Two records with `utterances`, one LJSpeech-style `text` record, one with neither."""
  rng = np.random.default_rng(0)
  clips = [
      {"name": "a", "tokens": rng.normal(size=(300, 29)).astype(np.float32),
       "utterances": json.dumps([{"text": "Hello there.", "start": 10, "end": 90},
                                 {"text": "Good morning, Dr. Smith!", "start": 120,
                                  "end": 260}])},
      {"name": "b", "tokens": rng.normal(size=(200, 29)).astype(np.float32),
       "utterances": json.dumps([{"text": "It costs $5.", "start": 0, "end": 100},
                                 {"text": "Hi.", "start": 150, "end": 156}])},  # too short.
      {"name": "c", "tokens": rng.normal(size=(120, 29)).astype(np.float32),
       "text": "The whole clip is one utterance."},
      {"name": "d", "tokens": rng.normal(size=(50, 29)).astype(np.float32)},
  ]
  path = os.path.join(out_dir, "train-00000-of-00001.array_record")
  writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
  for clip in clips:
    writer.write(records.encode_record(clip))
  writer.close()
  entries = [{"name": c["name"], "frames": int(c["tokens"].shape[0]), "shard": 0, "index": i}
             for i, c in enumerate(clips)]
  manifest = {"format_version": 1, "source_format": "ljspeech", "dims": {"tokens": 29},
              "stats": {}, "splits": {"train": {"shards": [os.path.basename(path)],
                                                "clips": entries, "hours": 0.0}}}
  with open(os.path.join(out_dir, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  return clips


def test_t2t_dataset(tmp_path):
  from avflow_jax.text import espeak
  try:
    espeak.library_source()
  except espeak.EspeakError as e:
    pytest.skip(f"eSpeak NG unavailable: {e}")
  clips = _write_t2t_shards(str(tmp_path))
  index = utterances.build_utterance_index(str(tmp_path), "train",
                                         cache_dir=str(tmp_path / "cache"))
  assert [(u["record"], u["start"], u["end"]) for u in index] == [
      (0, 10, 90), (0, 120, 260), (1, 0, 100), (1, 150, 156), (2, 0, 120)]
  # The cached index is reused verbatim.
  assert utterances.build_utterance_index(str(tmp_path), "train",
                                        cache_dir=str(tmp_path / "cache")) == index
  kept = utterances.filter_index(index, max_symbols=96, max_frames=128)
  # (0, 120, 260) has 140 frames > 128; "Hi." has more symbols (11) than frames (6).
  assert [(u["record"], u["start"]) for u in kept] == [(0, 10), (1, 0), (2, 0)]

  ds = utterances.make_t2t_dataset(str(tmp_path), "train", batch_size=2, seed=3,
                                 max_symbols=96, max_frames=128, num_epochs=2, index=index,
                                 process_index=0, process_count=1)
  batches = list(ds)
  assert len(batches) == 3  # 2 epochs x 3 utterances, batches of 2.
  seen = []
  for batch in batches:
    assert batch["ids"].shape == (2, 96) and batch["ids"].dtype == np.int32
    assert batch["tokens"].shape == (2, 128, 29) and batch["tokens"].dtype == np.float32
    for ids, n_ids, tokens, n_frames in zip(batch["ids"], batch["ids_len"], batch["tokens"],
                                            batch["tokens_len"]):
      assert (ids[n_ids:] == 0).all() and (tokens[n_frames:] == 0).all()
      match = [u for u in kept if u["end"] - u["start"] == n_frames]
      assert len(match) == 1
      u = match[0]
      np.testing.assert_array_equal(ids[:n_ids], u["ids"])
      np.testing.assert_array_equal(tokens[:n_frames],
                                    clips[u["record"]]["tokens"][u["start"]:u["end"]])
      seen.append(u["record"])
  assert sorted(seen) == [0, 0, 1, 1, 2, 2]
  # Same seed, same order; two processes get disjoint halves of the same stream.
  again = list(utterances.make_t2t_dataset(str(tmp_path), "train", 2, 3, 96, 128, num_epochs=2,
                                         index=index, process_index=0, process_count=1))
  np.testing.assert_array_equal(np.concatenate([b["ids"] for b in batches]),
                                np.concatenate([b["ids"] for b in again]))
  halves = [list(utterances.make_t2t_dataset(str(tmp_path), "train", 2, 3, 96, 128,
                                           num_epochs=2, index=index, process_index=p,
                                           process_count=2)) for p in (0, 1)]
  assert [len(h) for h in halves] == [3, 3] and halves[0][0]["ids"].shape == (1, 96)
  np.testing.assert_array_equal(halves[0][0]["ids"][0], batches[0]["ids"][0])
  np.testing.assert_array_equal(halves[1][0]["ids"][0], batches[0]["ids"][1])


def test_t2t_dataset_bad_utterances():
  clip = {"tokens": np.zeros((10, 29), np.float32),
          "utterances": json.dumps([{"text": "x", "start": 5, "end": 20}])}
  with pytest.raises(ValueError, match="rec7: utterances\\[0\\] frames \\[5, 20\\)"):
    utterances.clip_utterances(clip, "rec7")
  with pytest.raises(ValueError, match="rec7: field 'utterances' is not a JSON"):
    utterances.clip_utterances({"tokens": clip["tokens"], "utterances": "{oops"}, "rec7")
  assert utterances.clip_utterances({"tokens": clip["tokens"], "text": "hi"}, "r") == [
      ("hi", 0, 10)]
