"""BigVGAN Flax port: reference parity, checkpoint key mapping, torch-free .pt conversion."""

import io
import json
import os
import pickle
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from avflow_jax import convert_bigvgan
from avflow_jax.core import torch_reader
from avflow_jax.models import bigvgan as bv
from avflow_jax.models import bigvgan_checkpoint as bv_ckpt
from tests import fixtures

# A small config of the same architecture type as the base model (AMPBlock1, snakebeta logscale).
SMALL = dict(num_mels=80, upsample_initial_channel=32, resblock="1", upsample_rates=[4, 4],
             upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3, 7, 11],
             resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]], activation="snakebeta",
             snake_logscale=True)


@pytest.fixture
def torch_one_thread():
  """One torch thread: on a shared 2-core box the default pool makes a tiny forward take ~5 s."""
  torch = pytest.importorskip("torch")
  n = torch.get_num_threads()
  torch.set_num_threads(1)
  yield
  torch.set_num_threads(n)


def _reference_model(seed=0):
  """The official torch generator (pip `bigvgan`) with non-trivial random weights."""
  torch = pytest.importorskip("torch")
  pytest.importorskip("bigvgan")
  from bigvgan.bigvgan import BigVGAN  # pylint: disable=g-import-not-at-top
  from bigvgan.env import AttrDict  # pylint: disable=g-import-not-at-top
  torch.manual_seed(seed)
  # Built from a config dict directly: no hub download, works offline.
  model = BigVGAN(AttrDict(json.loads(json.dumps(SMALL))), use_cuda_kernel=False).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("weight_v"):
        p.normal_(0.0, 1.0)
      elif name.endswith("weight_g"):
        p.uniform_(0.3, 0.8)  # row norms: keeps the output inside tanh's linear-ish range
      elif name.endswith("bias"):
        p.normal_(0.0, 0.1)
      elif name.endswith(("alpha", "beta")):
        p.normal_(0.0, 0.3)  # log-scale: exp() of this is far from the trivial init 1
  return torch, model


def _state_dict_numpy(model):
  return {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}


def _random_mel(t=20, b=2, seed=0):
  return np.random.RandomState(seed).normal(-5.0, 2.0, (b, t, 80)).astype(np.float32)


def test_kaiser_filter_known_taps():
  taps = np.array([0.00203, 0.00939, -0.02554, -0.05766, 0.12857, 0.44321])
  f = bv.kaiser_sinc_filter()
  np.testing.assert_allclose(f[:6], taps, atol=1e-5)
  np.testing.assert_allclose(f, f[::-1])
  assert abs(f.sum() - 1.0) < 1e-6


def test_parity_with_reference(tmp_path, torch_one_thread):
  torch, model = _reference_model()
  sd = _state_dict_numpy(model)  # weight-normed, as in the official checkpoint
  assert any(k.endswith("weight_g") for k in sd)
  path = str(tmp_path / "g.safetensors")
  save_file(sd, path)
  with open(tmp_path / "config.json", "w") as f:
    json.dump(dict(SMALL, sampling_rate=22050, segment_size=8192), f)  # + training-only keys
  mel = _random_mel()
  model.remove_weight_norm()  # what the reference does at inference
  with torch.no_grad():
    ref = model(torch.from_numpy(mel.transpose(0, 2, 1))).numpy()[:, 0]
  config, params = bv_ckpt.load_bigvgan(path)
  assert config.upsample_rates == (4, 4) and config.upsample_initial_channel == 32
  out = np.asarray(jax.jit(bv.BigVGAN(config).apply)({"params": params}, jnp.asarray(mel)))
  assert out.shape == ref.shape == (2, 20 * 16)
  assert ref.std() > 0.05  # a non-trivial waveform, not saturated
  assert np.abs(ref).max() < 0.9
  err = np.abs(out - ref).max()
  print(f"BigVGAN parity: max abs diff {err:.3g}, ref std {ref.std():.3f}")
  assert err <= 1e-4


def test_parametrization_spelling_and_fused_weights():
  """`parametrizations.weight.original0/1` and plain fused `weight` give the same params."""
  config = bv.BigVGANConfig.from_dict(SMALL)
  sd = _random_state_dict(config, seed=1)
  ref = bv_ckpt.params_from_state_dict(sd, config)
  renamed = {k.replace("weight_g", "parametrizations.weight.original0")
              .replace("weight_v", "parametrizations.weight.original1"): v for k, v in sd.items()}
  alt = bv_ckpt.params_from_state_dict(renamed, config)
  fused = {}
  for k, v in sd.items():
    if k.endswith("weight_g"):
      vv = sd[k[:-1] + "v"]
      fused[k[:-len("_g")]] = v * vv / np.sqrt((vv ** 2).sum(axis=(1, 2), keepdims=True))
    elif not k.endswith("weight_v"):
      fused[k] = v
  alt2 = bv_ckpt.params_from_state_dict(fused, config)
  for a, b, c in zip(jax.tree_util.tree_leaves(ref), jax.tree_util.tree_leaves(alt),
                     jax.tree_util.tree_leaves(alt2)):
    np.testing.assert_allclose(a, b)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-7)


def _random_state_dict(config, seed=0):
  return fixtures.random_bigvgan_state_dict(config, seed, std=0.1)


def _base_keys_from_spec():
  """Key names/shapes of bigvgan_base_22khz_80band, written out independently of the port."""
  keys = {"conv_pre.weight_g": (512, 1, 1), "conv_pre.weight_v": (512, 80, 7),
          "conv_pre.bias": (512,), "conv_post.weight_g": (1, 1, 1),
          "conv_post.weight_v": (1, 32, 7), "conv_post.bias": (1,)}
  ch = [512, 256, 128, 64, 32]
  for i, k in enumerate([16, 16, 4, 4]):
    keys[f"ups.{i}.0.weight_g"] = (ch[i], 1, 1)  # transposed conv: norm per input channel
    keys[f"ups.{i}.0.weight_v"] = (ch[i], ch[i + 1], k)
    keys[f"ups.{i}.0.bias"] = (ch[i + 1],)
    for j, rk in enumerate([3, 7, 11]):
      b = 3 * i + j
      for m in range(3):
        for conv in ("convs1", "convs2"):
          keys[f"resblocks.{b}.{conv}.{m}.weight_g"] = (ch[i + 1], 1, 1)
          keys[f"resblocks.{b}.{conv}.{m}.weight_v"] = (ch[i + 1], ch[i + 1], rk)
          keys[f"resblocks.{b}.{conv}.{m}.bias"] = (ch[i + 1],)
      for a in range(6):
        p = f"resblocks.{b}.activations.{a}"
        keys.update({f"{p}.act.alpha": (ch[i + 1],), f"{p}.act.beta": (ch[i + 1],),
                     f"{p}.upsample.filter": (1, 1, 12),
                     f"{p}.downsample.lowpass.filter": (1, 1, 12)})
  keys.update({"activation_post.act.alpha": (32,), "activation_post.act.beta": (32,),
               "activation_post.upsample.filter": (1, 1, 12),
               "activation_post.downsample.lowpass.filter": (1, 1, 12)})
  return keys


def test_base_checkpoint_keys_shapes_and_params(tmp_path):
  keys = _base_keys_from_spec()
  assert len(keys) == 526
  assert bv_ckpt.state_dict_shapes() == keys
  n = sum(int(np.prod(s)) for s in keys.values())
  assert abs(n / 1e6 - 13.95) < 0.01  # 13.955 M incl. the 12-tap filter buffers
  sd = _random_state_dict(bv.BigVGANConfig())
  path = str(tmp_path / "base.npz")
  np.savez(path, **sd)
  config, params = bv_ckpt.load_bigvgan(path)  # no config.json: base defaults
  assert config == bv.BigVGANConfig()
  # Fused weights: the state dict minus the weight_g magnitudes and the filter buffers.
  fused = sum(int(np.prod(s)) for k, s in keys.items() if not k.endswith(("weight_g", "filter")))
  assert bv.num_params(params) == fused == 13_943_361
  # The loaded tree has exactly the structure/shapes that init would create.
  model = bv.BigVGAN(config)
  mel = jnp.zeros((1, 8, 80))
  out, init_shapes = jax.eval_shape(model.init_with_output, jax.random.PRNGKey(0), mel)
  init_shapes = init_shapes["params"]
  assert (jax.tree_util.tree_structure(init_shapes)
          == jax.tree_util.tree_structure(params))
  for a, b in zip(jax.tree_util.tree_leaves(init_shapes), jax.tree_util.tree_leaves(params)):
    assert a.shape == b.shape
  assert out.shape == (1, 8 * 256)
  # Layout: conv (out, in, k) -> (k, in, out); conv-transpose (in, out, k) -> (k, in, out).
  g, v = sd["ups.0.0.weight_g"], sd["ups.0.0.weight_v"]
  w = g * v / np.sqrt((v.astype(np.float64) ** 2).sum(axis=(1, 2), keepdims=True))
  np.testing.assert_allclose(params["ups_0"]["kernel"], w.transpose(2, 0, 1), rtol=1e-5)
  g, v = sd["conv_pre.weight_g"], sd["conv_pre.weight_v"]
  w = g * v / np.sqrt((v.astype(np.float64) ** 2).sum(axis=(1, 2), keepdims=True))
  np.testing.assert_allclose(params["conv_pre"]["kernel"], w.transpose(2, 1, 0), rtol=1e-5)
  np.testing.assert_array_equal(params["resblocks_11"]["activations_5"]["beta"],
                                sd["resblocks.11.activations.5.act.beta"])


def test_loader_errors_name_the_key(tmp_path):
  config = bv.BigVGANConfig.from_dict(SMALL)
  sd = _random_state_dict(config)
  bad = dict(sd)
  del bad["resblocks.4.convs2.1.weight_v"]
  with pytest.raises(KeyError, match="resblocks.4.convs2.1.weight_v"):
    bv_ckpt.params_from_state_dict(bad, config)
  bad = dict(sd, **{"conv_post.bias": np.zeros((2,), np.float32)})
  with pytest.raises(ValueError, match="conv_post.bias"):
    bv_ckpt.params_from_state_dict(bad, config)
  bad = dict(sd, **{"activation_post.upsample.filter": np.ones((1, 1, 12), np.float32)})
  with pytest.raises(ValueError, match="activation_post.upsample.filter"):
    bv_ckpt.params_from_state_dict(bad, config)
  bad = dict(sd, **{"resblocks.99.convs1.0.bias": np.zeros((3,), np.float32)})
  with pytest.raises(ValueError, match="resblocks.99.convs1.0.bias"):
    bv_ckpt.params_from_state_dict(bad, config)
  # Base-config weights loaded with a mismatched config.json: the shape error names the file.
  path = str(tmp_path / "w.safetensors")
  save_file(sd, path)
  with pytest.raises(ValueError, match="w.safetensors.*conv_pre"):
    bv_ckpt.load_bigvgan(path)  # no config.json -> base config, but these are SMALL weights
  with pytest.raises(FileNotFoundError):
    bv_ckpt.load_bigvgan(str(tmp_path / "missing.safetensors"))


def test_convert_torch_checkpoint(tmp_path, torch_one_thread):
  torch, model = _reference_model(seed=3)
  sd = model.state_dict()
  pt = tmp_path / "bigvgan_generator.pt"
  torch.save({"generator": sd}, pt)
  with open(tmp_path / "config.json", "w") as f:
    json.dump(SMALL, f)
  out = tmp_path / "conv" / "g.safetensors"
  arrays = convert_bigvgan.convert(str(pt), str(out))
  assert set(arrays) == set(sd)
  for k, v in sd.items():
    np.testing.assert_array_equal(arrays[k], v.numpy())
  assert (tmp_path / "conv" / "config.json").exists()  # copied next to the output
  config, params = bv_ckpt.load_bigvgan(str(out))
  assert config.upsample_initial_channel == 32
  # Non-contiguous, offset views and half / bfloat16 storages rebuild exactly.
  base = torch.randn(6, 5)
  odd = {"t": base.t(), "s": base[2:, 1:4], "h": torch.randn(7).half(),
         "bf": torch.randn(3, 2).bfloat16()}
  torch.save(odd, tmp_path / "odd.pt")
  got = torch_reader.read_torch_state_dict(str(tmp_path / "odd.pt"))
  for k, v in odd.items():
    np.testing.assert_array_equal(got[k], v.float().numpy())


class _Evil:

  def __reduce__(self):
    return (os.system, ("touch pwned_marker",))


def _zip_with_pickle(path, obj_bytes):
  with zipfile.ZipFile(path, "w") as zf:
    zf.writestr("archive/data.pkl", obj_bytes)
    zf.writestr("archive/byteorder", "little")


def test_converter_refuses_malicious_pickle(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  bad = tmp_path / "evil.pt"
  _zip_with_pickle(bad, pickle.dumps({"generator": {"w": _Evil()}}, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match="system"):
    torch_reader.read_torch_state_dict(str(bad))
  assert not (tmp_path / "pwned_marker").exists()
  _zip_with_pickle(bad, pickle.dumps(io.BytesIO, protocol=2))
  with pytest.raises(pickle.UnpicklingError, match="_io.BytesIO"):
    torch_reader.read_torch_state_dict(str(bad))
  (tmp_path / "legacy.pt").write_bytes(pickle.dumps({"a": 1}))
  with pytest.raises(ValueError, match="not a torch zip"):
    torch_reader.read_torch_state_dict(str(tmp_path / "legacy.pt"))
