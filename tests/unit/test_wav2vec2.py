"""wav2vec2 CTC Flax port: HF parity, checkpoint key mapping, chunked token extraction, CTC."""

import json
import os

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.numpy import save_file

from avflow_jax.core import constants as C
from avflow_jax.models import asr
from avflow_jax.models import wav2vec2 as w2v
from avflow_jax.models import wav2vec2_checkpoint as w2v_ckpt

# Same architecture type as base 960h (group-norm conv0, post-LN, even pos-conv kernel), tiny.
# query_block 64 < frames so the blocked attention path (lax.map + query padding) is exercised.
TINY_HF = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
               conv_dim=[32, 32, 32], conv_kernel=[10, 3, 2], conv_stride=[5, 2, 2],
               num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
               feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False,
               vocab_size=32, layer_norm_eps=1e-5)
TINY = w2v.Wav2Vec2Config(
    conv_dim=(32, 32, 32), conv_kernel=(10, 3, 2), conv_stride=(5, 2, 2), hidden_size=64,
    num_hidden_layers=2, num_attention_heads=4, intermediate_size=96, num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=4, query_block=64)
# Receptive field 30 samples, hop 20: frames = (N - 30) // 20 + 1.
G_NEW = "parametrizations.weight.original0"
V_NEW = "parametrizations.weight.original1"
POS = "wav2vec2.encoder.pos_conv_embed.conv."


@pytest.fixture
def torch_one_thread():
  """One torch thread: the default pool is slow on a shared 2-core box."""
  torch = pytest.importorskip("torch")
  n = torch.get_num_threads()
  torch.set_num_threads(1)
  yield torch
  torch.set_num_threads(n)


def _hf_model(torch):
  transformers = pytest.importorskip("transformers")
  torch.manual_seed(0)
  model = transformers.Wav2Vec2ForCTC(transformers.Wav2Vec2Config(**TINY_HF)).eval()
  # HF init gives near-constant logits; wider random weights make every path matter.
  with torch.no_grad():
    for name, p in model.named_parameters():
      base = 1.0 if name.endswith("norm.weight") else 0.0
      p.copy_(base + 0.3 * torch.randn_like(p))
  return model


def _to_legacy_weight_norm(src_dir, dst_dir):
  """Copies a saved model, renaming parametrizations.* to legacy weight_g / weight_v."""
  state = load_file(os.path.join(src_dir, "model.safetensors"))
  renamed = {k.replace(G_NEW, "weight_g").replace(V_NEW, "weight_v"): v for k, v in state.items()}
  assert POS + "weight_g" in renamed and POS + "weight_v" in renamed
  os.makedirs(dst_dir)
  save_file(renamed, os.path.join(dst_dir, "model.safetensors"))
  with open(os.path.join(src_dir, "config.json")) as f:
    cfg = f.read()
  with open(os.path.join(dst_dir, "config.json"), "w") as f:
    f.write(cfg)


def test_parity_with_transformers_both_weight_norm_spellings(torch_one_thread, tmp_path):
  torch = torch_one_thread
  model = _hf_model(torch)
  new_dir = str(tmp_path / "new")
  model.save_pretrained(new_dir)
  keys = load_file(os.path.join(new_dir, "model.safetensors"))
  assert POS + G_NEW in keys  # transformers 5 writes the parametrizations spelling.
  old_dir = str(tmp_path / "old")
  _to_legacy_weight_norm(new_dir, old_dir)

  rng = np.random.default_rng(0)
  audio = rng.standard_normal((2, 3000)).astype(np.float32)
  with torch.no_grad():
    ref = model(torch.from_numpy(audio)).logits.numpy()
    ref_short = model(torch.from_numpy(audio[1:, :2200])).logits.numpy()[0]
  assert ref.shape == (2, 149, 32)
  assert ref.std() > 1.0  # non-trivial logits

  for d in (new_dir, old_dir):
    cfg, params = w2v_ckpt.load_wav2vec2(d)
    assert cfg.hidden_size == 64 and cfg.conv_kernel == (10, 3, 2)
    cfg = w2v.Wav2Vec2Config(**{**cfg.__dict__, "query_block": 64})
    fwd = jax.jit(w2v.wav2vec2_logits, static_argnums=0)
    out = np.asarray(fwd(cfg, params, audio))
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
    # A padded row with `lengths` equals the unpadded forward on its valid frames.
    masked = np.asarray(fwd(cfg, params, audio, np.array([3000, 2200])))
    np.testing.assert_allclose(masked[1, :ref_short.shape[0]], ref_short, atol=1e-4, rtol=0)
    np.testing.assert_allclose(masked[0], ref[0], atol=1e-4, rtol=0)


# ---------------------------------------------------------------------------------------------
# Torch-free tests.

def _hf_state(cfg, params):
  """Inverse of the loader's mapping: Flax params -> HF-named numpy state (legacy weight norm)."""
  # pylint: disable=protected-access
  inverse = {w2v_ckpt._linear: lambda a: a.T, w2v_ckpt._conv: lambda a: a.transpose(2, 1, 0)}
  state = {}
  for name, (path, fn, shape) in w2v_ckpt._expected_keys(cfg).items():
    leaf = params
    for p in path:
      leaf = leaf[p]
    state[name] = np.ascontiguousarray(inverse.get(fn, lambda a: a)(np.asarray(leaf)))
    assert state[name].shape == shape
  v = np.asarray(params["pos_conv_embed"]["kernel"]).transpose(2, 1, 0) * 3.0
  state[POS + "weight_v"] = v.copy()
  state[POS + "weight_g"] = np.sqrt((v ** 2).sum(axis=(0, 1), keepdims=True)) / 3.0
  state["wav2vec2.masked_spec_embed"] = np.zeros(cfg.hidden_size, np.float32)
  return state


def _write(tmp_path, state, cfg_dict=None, sub="ckpt"):
  d = tmp_path / sub
  d.mkdir(exist_ok=True)
  name = "model.safetensors"
  save_file(state, str(d / name))
  if cfg_dict is not None:
    (d / "config.json").write_text(json.dumps(cfg_dict))
  return str(d / name)


@pytest.fixture(scope="module")
def tiny_params():
  return w2v.init_params(TINY, seed=1)


def test_key_mapping_round_trip(tmp_path, tiny_params):
  path = _write(tmp_path, _hf_state(TINY, tiny_params), TINY_HF)
  cfg, params = w2v_ckpt.load_wav2vec2(os.path.dirname(path))
  assert cfg.conv_dim == TINY.conv_dim and cfg.num_hidden_layers == 2
  flat_a = jax.tree_util.tree_leaves_with_path(params)
  flat_b = dict(jax.tree_util.tree_leaves_with_path(tiny_params))
  assert len(flat_a) == len(flat_b)
  for k, v in flat_a:
    # The weight-norm fold (g * v / |v|) reproduces the kernel.
    np.testing.assert_allclose(np.asarray(v), np.asarray(flat_b[k]), rtol=1e-6, atol=1e-7)


def test_loader_errors_name_keys(tmp_path, tiny_params):
  state = _hf_state(TINY, tiny_params)
  bad = dict(state)
  del bad["lm_head.bias"]
  bad["wav2vec2.encoder.layers.9.extra"] = np.zeros(3, np.float32)
  bad["wav2vec2.encoder.layer_norm.weight"] = np.ones(65, np.float32)
  path = _write(tmp_path, bad, TINY_HF)
  with pytest.raises(ValueError) as e:
    w2v_ckpt.load_wav2vec2(path)
  msg = str(e.value)
  assert path in msg and "lm_head.bias" in msg and "layers.9.extra" in msg
  assert "wav2vec2.encoder.layer_norm.weight: file (65,), expected (64,)" in msg

  both = dict(state)
  both[POS + G_NEW] = state[POS + "weight_g"]
  both[POS + V_NEW] = state[POS + "weight_v"]
  with pytest.raises(ValueError, match="both weight-norm spellings"):
    w2v_ckpt.load_wav2vec2(_write(tmp_path, both, TINY_HF))

  # No config.json: base-960h defaults, so a tiny checkpoint reports shape mismatches.
  with pytest.raises(ValueError, match="shape mismatches"):
    w2v_ckpt.load_wav2vec2(_write(tmp_path, state, None, sub="noconfig"))

  with pytest.raises(ValueError, match="do_stable_layer_norm"):
    w2v_ckpt.load_wav2vec2(_write(tmp_path, state, {**TINY_HF, "do_stable_layer_norm": True}))
  with pytest.raises(FileNotFoundError, match="nothere"):
    w2v_ckpt.load_wav2vec2(str(tmp_path / "nothere"))


def test_base_defaults_and_frame_count():
  cfg = w2v.Wav2Vec2Config()
  assert cfg.receptive_field == 400 and cfg.hop == 320
  assert cfg.conv_kernel == (10, 3, 3, 3, 3, 2, 2) and cfg.num_conv_pos_embeddings == 128
  params = jax.eval_shape(lambda: w2v.init_params(cfg))
  n_params = sum(np.prod(x.shape) for x in jax.tree_util.tree_leaves(params))
  assert 94.0e6 < n_params < 94.5e6  # 94.4 M minus the unused mask embedding (768).
  for n in (400, 719, 720, 16000, 320000, 1_600_000):
    assert w2v.output_lengths(cfg, n) == (n - 400) // 320 + 1
  for n in (719, 320000):  # the traced model agrees with the formula
    audio = jax.ShapeDtypeStruct((1, n), np.float32)
    out = jax.eval_shape(lambda a, p: w2v.wav2vec2_logits(cfg, p, a), audio, params)
    assert out.shape == (1, (n - 400) // 320 + 1, 32)
  assert w2v.output_lengths(cfg, 1_600_000) == 4999  # one official 100 s chunk.
  assert w2v.output_lengths(cfg, 399) == 0


def test_chunked_extraction(tiny_params):
  model = asr.make_asr_model(TINY, tiny_params)
  rng = np.random.default_rng(0)
  # 2.3 s at 16 kHz with 1 s chunks: pieces of 16000, 16000, 4800 samples.
  x = asr.normalize_waveform(rng.standard_normal(36800))
  tok = asr.extract_tokens(x, 16000, model, chunk_seconds=1.0, normalize=False)
  per_piece = [(n - 30) // 20 + 1 for n in (16000, 16000, 4800)]
  assert tok.shape == (sum(per_piece), 29) and tok.dtype == np.float32

  # Each chunk is an independent forward of exactly its samples (the last one padded to the
  # 1 s bucket and masked): compare with direct unpadded forwards.
  fwd = jax.jit(w2v.wav2vec2_logits, static_argnums=0)
  ref = np.concatenate([np.asarray(fwd(TINY, tiny_params, x[None, s:s + 16000]))[0]
                        for s in (0, 16000, 32000)])[:, list(C.HF_TO_TOKEN_INDEX)]
  np.testing.assert_allclose(tok, ref, atol=2e-5, rtol=0)

  # One big chunk = the unchunked forward. Away from the boundaries chunked frames are close to
  # it (only conv0's norm statistics and the attention context differ).
  whole = asr.extract_tokens(x, 16000, model, chunk_seconds=3.0, normalize=False)
  assert whole.shape == ((36800 - 30) // 20 + 1, 29)
  np.testing.assert_allclose(
      whole, np.asarray(fwd(TINY, tiny_params, x[None]))[0][:, list(C.HF_TO_TOKEN_INDEX)],
      atol=2e-5, rtol=0)
  # Chunk k's frames sit one frame per earlier chunk before their true time (the official
  # extraction's frame loss): chunk 1 frame j is time frame 800 + j, stored at 799 + j.
  inner = slice(100, 700)
  d_aligned = np.abs(tok[per_piece[0]:][inner] - whole[800:][inner]).mean()
  d_shifted = np.abs(tok[per_piece[0]:][inner] - whole[799:][inner]).mean()
  d_first = np.abs(tok[:per_piece[0]][inner] - whole[inner]).mean()
  assert d_aligned < 0.5 * d_shifted and d_first < 0.5 * d_shifted, (d_aligned, d_first, d_shifted)

  # normalize=True: gain and DC do not matter; resampling 32 kHz -> 16 kHz halves the length.
  a = asr.extract_tokens(x, 16000, model, chunk_seconds=3.0)
  b = asr.extract_tokens(5.0 * x + 0.3, 16000, model, chunk_seconds=3.0)
  np.testing.assert_allclose(a, b, atol=1e-4, rtol=0)
  x32 = rng.standard_normal(2 * 8000).astype(np.float32)
  assert asr.extract_tokens(x32, 32000, model).shape == ((8000 - 30) // 20 + 1, 29)
  # A trailing piece shorter than the receptive field gives no frame.
  assert asr.extract_tokens(x[:16010], 16000, model, 1.0).shape[0] == (16000 - 30) // 20 + 1
  assert asr.extract_tokens(x[:20], 16000, model).shape == (0, 29)

  with pytest.raises(ValueError, match="mono"):
    asr.extract_tokens(np.zeros((2, 100)), 16000, model)
  with pytest.raises(ValueError, match="NaN"):
    asr.extract_tokens(np.full(100, np.nan), 16000, model)


def test_buckets():
  assert asr.bucket_samples(1_600_000)[-1] == 1_600_000
  assert asr.bucket_samples(16000) == (16000,)
  assert asr.bucket_samples(50000) == (16000, 32000, 48000, 50000)
  b = asr.bucket_samples(1_600_000)
  for n in (1, 15999, 16000, 16001, 700_000, 1_599_999):
    p = asr._padded_length(n, b)  # pylint: disable=protected-access
    assert n <= p <= max(48000, 1.34 * n)  # ratio <= 4/3 above 3 s.


def test_greedy_ctc_decode():
  seq = "--HH-E-LL-L-OO||WW-O-R-L-D--|"
  logits = np.full((len(seq), 29), -5.0, np.float32)
  for t, ch in enumerate(seq):
    logits[t, C.TOKEN_LABELS.index(ch)] = 3.0
  assert asr.greedy_ctc_decode(logits) == "HELLO WORLD"
  assert asr.greedy_ctc_decode(np.zeros((0, 29))) == ""
  with pytest.raises(ValueError, match="29"):
    asr.greedy_ctc_decode(np.zeros((4, 32)))


def test_benchmark_helper_runs():
  factor = asr.benchmark_realtime_factor(seconds=1.0, repeats=1, config=TINY)
  assert factor > 1.0  # a tiny model runs far faster than real time
