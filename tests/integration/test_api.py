"""The Python API and avatar loading: buckets without recompiles, padding invariance, errors."""

import atexit
import functools
import json
import os
import shutil
import tempfile

import jax
import numpy as np
import pytest

from avflow_jax import api
from avflow_jax.core import constants as C
from avflow_jax.data import clips
from avflow_jax.inference import loading
from avflow_jax.inference import sampling
from avflow_jax.training import random_init
from data_prep import synthetic

pytestmark = pytest.mark.usefixtures("fast_compile")  # Small models: compile >> run.


@functools.lru_cache(maxsize=None)
def avatar_workdir(shards_dir: str) -> str:
  """A configs/tiny.py avatar with random weights on `shards_dir` (the layout loop.py writes).

  Cached per process so test_api and test_sample share it. Training for a few steps would be
  the same to the sampler but costs a minute of compilation on 2 cores; test_sample has one
  (slow) round trip through loop.train_and_evaluate for the real thing.
  """
  from configs import tiny  # pylint: disable=g-import-not-at-top
  root = tempfile.mkdtemp(prefix="avflow_sample_test_")
  atexit.register(shutil.rmtree, root, True)
  return random_init.init_workdir(tiny.get_config(), os.path.join(root, "run"), shards_dir)


def trained_workdir(shards_dir: str, root: str) -> str:
  """A configs/tiny.py avatar trained for 2 steps (head VAE: 2 steps) into root/run."""
  from avflow_jax.training import loop  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  c = tiny.get_config()
  c.data.dir = shards_dir
  c.num_steps = 2
  c.head_vae.steps = 2
  c.ckpt_every = 2
  c.log_every = 1
  c.async_checkpointing = False
  workdir = os.path.join(root, "run")
  loop.train_and_evaluate(c, workdir)
  return workdir


def rig_data_dir(shards_dir: str, root: str) -> str:
  """A copy of the shard dir's manifest (shards linked) whose face_decoder is a demo rig."""
  return synthetic.shards_with_face_rig(shards_dir, root, seed=3, name="rig.npz")


@pytest.fixture(scope="module")
def workdir(tiny_shards):
  return avatar_workdir(tiny_shards)


@pytest.fixture(scope="module")
def avatar(workdir):
  return api.Avatar.load(workdir)


def _tokens(t, seed=0, batch=None):
  shape = (t, C.TOKEN_DIM) if batch is None else (batch, t, C.TOKEN_DIM)
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def test_bucket_frames():
  assert [api.bucket_frames(t) for t in (1, 255, 256, 257, 1723)] == [256, 256, 256, 512, 1792]
  assert [api.bucket_frames(t, (64, 128, 384)) for t in (10, 64, 65, 384, 400)] == [
      64, 64, 128, 384, 768]
  with pytest.raises(ValueError):
    api.bucket_frames(3, 0)


def test_resample_to_fps_known_answer():
  # A stream equal to its frame-centre time in seconds must come out as the 30 fps centre times.
  t = 431
  x = ((np.arange(t) + 0.5) / C.FRAME_RATE)[:, None]
  y = api.resample_to_fps(x)
  n = api.frames_at_fps(t)
  assert n == round(t * 30 / C.FRAME_RATE) == 150
  assert y.shape == (n, 1)
  want = (np.arange(n) + 0.5) / 30.0
  inner = (want > x[0, 0]) & (want < x[-1, 0])
  np.testing.assert_allclose(y[inner, 0], want[inner], atol=1e-6)


def test_generate_outputs(avatar):
  t = 120
  out = avatar.generate(_tokens(t), seed=1)
  n30 = api.frames_at_fps(t)
  assert out["waveform"].shape == (t * C.HOP_LENGTH,) and out["waveform"].dtype == np.float32
  assert np.abs(out["waveform"]).max() <= 1.0
  assert out["mel"].shape == (t, 80)
  assert out["face"].shape == (t, 256)
  assert out["head"].shape == (t, 7)
  assert out["face_30fps"].shape == (n30, 256)
  assert out["head_30fps"].shape == (n30, 7)
  np.testing.assert_allclose(np.linalg.norm(out["head_30fps"][:, :4], axis=-1), 1.0, atol=1e-5)
  assert "rig" not in out  # The synthetic data has no face rig.
  for k in ("mel", "face", "head", "face_30fps", "head_30fps"):
    assert np.isfinite(out[k]).all(), k


def test_same_bucket_does_not_recompile(avatar):
  avatar.sample_motion(_tokens(40), seed=0)  # Bucket 256 compiled (or already there).
  n = api.compiled_programs()
  for t in (1, 100, 255, 256):
    avatar.sample_motion(_tokens(t), seed=t)
  assert api.compiled_programs() == n
  avatar.sample_motion(_tokens(257), seed=0)  # A new bucket: exactly one more program.
  assert api.compiled_programs() == n + 1


def test_padding_is_inert_and_matches_unpadded_call(avatar):
  t = 100
  tok = _tokens(t, seed=5)
  padded = avatar.sample_motion(tok, seed=3)  # Padded to 256 frames.
  loaded = avatar.loaded
  ref = jax.device_get(sampling.sample(loaded.model, loaded.head_vae, loaded.params, tok[None],
                                       jax.random.PRNGKey(3)))  # No padding at all.
  for k in ("mel", "face", "head"):
    np.testing.assert_allclose(padded[k], ref[k], atol=2e-5, err_msg=k)
  # Another bucket size (more padding) gives the same frames too.
  other = api.Avatar(loaded, None, buckets=(128, 512))
  again = other.sample_motion(tok, seed=3)
  for k in ("mel", "face", "head"):
    np.testing.assert_allclose(again[k], padded[k], atol=2e-5, err_msg=k)


def test_seed_determinism_and_batches(avatar):
  tok = _tokens(60, seed=2)
  a = avatar.sample_motion(tok, seed=4)
  b = avatar.sample_motion(tok, seed=4)
  c = avatar.sample_motion(tok, seed=5)
  np.testing.assert_array_equal(a["mel"], b["mel"])
  assert not np.allclose(a["mel"], c["mel"])
  batch = avatar.generate(np.stack([tok, tok]), seed=4, vocode=False)
  assert batch["mel"].shape == (2, 60, 80) and batch["head_30fps"].shape[0] == 2
  assert not np.allclose(batch["mel"][0], batch["mel"][1])  # Each element has its own noise.


def test_run_config_sets_the_default_temperature(workdir, avatar, tmp_path):
  """A run samples at its config's sample.temperature unless a call asks for another; a run
  saved before the field existed samples at 1.0, the trained distribution."""
  tok = _tokens(60, seed=2)
  half = tmp_path / "half"
  shutil.copytree(workdir, half)
  with open(half / "config.json") as f:
    config = json.load(f)
  assert config["sample"]["temperature"] == 1.0  # configs/base.py's, kept by configs/tiny.py.
  config["sample"]["temperature"] = 0.5
  with open(half / "config.json", "w") as f:
    json.dump(config, f)
  run = api.Avatar.load(str(half))
  assert run.loaded.sample_temperature == 0.5
  np.testing.assert_array_equal(run.sample_motion(tok, seed=4)["mel"],
                                avatar.sample_motion(tok, seed=4, temperature=0.5)["mel"])
  np.testing.assert_array_equal(run.sample_motion(tok, seed=4, temperature=1.0)["mel"],
                                avatar.sample_motion(tok, seed=4)["mel"])
  del config["sample"]
  with open(half / "config.json", "w") as f:
    json.dump(config, f)
  assert api.Avatar.load(str(half)).loaded.sample_temperature == 1.0


def test_bad_tokens(avatar):
  with pytest.raises(api.AvatarError, match=r"\(T, 29\)"):
    avatar.generate(np.zeros((10, 30), np.float32))
  with pytest.raises(api.AvatarError, match="NaN"):
    avatar.generate(np.full((10, 29), np.nan, np.float32))
  with pytest.raises(api.AvatarError, match="empty"):
    avatar.generate(np.zeros((0, 29), np.float32))
  with pytest.raises(api.AvatarError, match="participant"):
    avatar.generate(_tokens(10), participant=np.zeros((10, 87), np.float32))
  # Huge but finite values are the input's fault, not a broken checkpoint's.
  with pytest.raises(api.AvatarError, match=r"tokens: values up to 1e\+30 lie .* standard "
                     r"deviations from the training data's mean \(limit 1000\)"):
    avatar.generate(np.full((10, 29), 1e30, np.float32))
  avatar.sample_motion(_tokens(10) * 5)  # Real-looking inputs pass.


def test_face_rig_channels(workdir, tiny_shards, tmp_path):
  data = rig_data_dir(tiny_shards, str(tmp_path / "rigdata"))
  av = api.Avatar.load(workdir, data_dir=data)
  assert av.face_rig is not None
  out = av.generate(_tokens(90), seed=0, vocode=False)
  assert out["rig"].shape == (90, 6) and out["rig_30fps"].shape == (api.frames_at_fps(90), 6)
  np.testing.assert_allclose(out["rig"], av.face_rig.decode(out["face"], clip=True), atol=1e-6)
  assert out["rig"].min() >= 0 and out["rig"].max() <= 1
  assert tuple(out["rig_channels"])[0] == "jaw_open"


def test_load_errors(workdir, tmp_path):
  with pytest.raises(api.AvatarError, match="no such directory"):
    loading.load_avatar(str(tmp_path / "missing"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(api.AvatarError, match="config.json: missing"):
    loading.load_avatar(str(empty))
  # A config but no checkpoint.
  no_ckpt = tmp_path / "no_ckpt"
  no_ckpt.mkdir()
  shutil.copy(os.path.join(workdir, "config.json"), no_ckpt / "config.json")
  os.symlink(os.path.join(workdir, "head_vae"), no_ckpt / "head_vae")
  with pytest.raises(api.AvatarError, match="no checkpoints"):
    loading.load_avatar(str(no_ckpt))
  # The data dir moved: the message names it and the fix; data_dir= repairs it.
  moved = tmp_path / "moved"
  shutil.copytree(workdir, moved, symlinks=True)
  with open(moved / "config.json") as f:
    cfg = json.load(f)
  real_data = cfg["data"]["dir"]
  cfg["data"]["dir"] = str(tmp_path / "gone")
  with open(moved / "config.json", "w") as f:
    json.dump(cfg, f)
  with pytest.raises(api.AvatarError, match=r"gone/manifest.json: missing.*--data-dir"):
    loading.load_avatar(str(moved))
  loaded = loading.load_avatar(str(moved), data_dir=real_data)
  assert loaded.step == 0 and loaded.which == "ema"
  with pytest.raises(api.AvatarError, match="which"):
    loading.load_avatar(workdir, which="best")
  with pytest.raises(api.AvatarError, match="vocoder weights file missing"):
    api.Avatar.load(workdir, vocoder_weights=str(tmp_path / "nope.safetensors"))


def test_another_corpus_keeps_the_runs_normalisation(workdir, avatar, tmp_path):
  # Scoring a run on another corpus (--data-dir) reads that corpus's clips but keeps the
  # statistics the model was trained with: its own data dir's while that still exists.
  other = synthetic.write_synthetic_shards(str(tmp_path / "other"), n_train=2, n_val=2,
                                           frames=60, seed=7)
  own = avatar.loaded.manifest["stats"]
  with open(os.path.join(other, "manifest.json")) as f:
    assert json.load(f)["stats"]["mel"] != own["mel"]  # The check below can fail.
  loaded = loading.load_avatar(workdir, data_dir=other)
  assert loaded.data_dir == os.path.abspath(other)
  assert loaded.manifest["stats"] == own
  assert clips.read_clip(loaded.data_dir, loaded.manifest, "val001")["tokens"].shape[0] == 67


def test_read_clip(workdir):
  loaded = loading.load_avatar(workdir, which="params")
  rec = clips.read_clip(loaded.data_dir, loaded.manifest, "val002")
  assert rec["name"] == "val002" and rec["tokens"].shape == (120 + 14, 29)
  with pytest.raises(api.AvatarError, match="'nope' is not in"):
    clips.read_clip(loaded.data_dir, loaded.manifest, "nope")


def test_non_finite_sample_is_an_error_and_extreme_mels_vocode(avatar):
  import dataclasses  # pylint: disable=g-import-not-at-top
  loaded = avatar.loaded
  av = jax.tree.map(lambda x: x, loaded.params["av"])
  av["out_a"] = dict(av["out_a"], bias=av["out_a"]["bias"] * np.nan)
  broken = api.Avatar(dataclasses.replace(loaded, params=dict(loaded.params, av=av)), None)
  with pytest.raises(api.AvatarError, match=r"produced NaN/inf in .*mel.*is broken"):
    broken.sample_motion(_tokens(30))
  # An untrained model's mel can be far outside any real range; the vocoder still gets a
  # finite, clipped input and the waveform stays finite.
  wav = avatar.vocode(np.full((20, 80), 800.0, np.float32))
  assert wav.shape == (20 * C.HOP_LENGTH,) and np.isfinite(wav).all()
