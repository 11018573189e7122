"""The official release in and out: files written by the official code (tests/data/official)."""

import os
import zipfile

import jax
import numpy as np
import pytest

from avflow_jax.core import align
from avflow_jax.core import cli
from avflow_jax.core import torch_reader
from avflow_jax.core import torch_writer
from avflow_jax.core.errors import AvatarError
from avflow_jax.inference import avatar as avatar_lib
from avflow_jax.inference import official_export
from avflow_jax.inference import official_import
from avflow_jax.models import official_keys

DATA = os.path.join(os.path.dirname(__file__), "..", "data", "official")
ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
# The fixtures' small official model: 3 layers of width 64 with per-layer windows.
WINDOWS = ((16, 8), (16, 8), (4, 2))


def _fixture(name):
  return os.path.join(DATA, name)


def _config(dyadic=False):
  c = cli.load_config_file(os.path.join(ROOT, "configs", "official_50h.py")
                           + (":dyadic" if dyadic else ""))
  with c.unlocked():
    c.model.windows = WINDOWS
    c.model.num_heads = 4
  return c


@pytest.fixture(scope="module")
def head_stats_dir(tmp_path_factory):
  """The fixtures' head normstats as the release ships them (one .npy per vector)."""
  d = tmp_path_factory.mktemp("normstats")
  io = np.load(_fixture("head_vae_io.npz"))
  for name in official_import.HEAD_STATS:
    np.save(d / f"{name}.npy", io[name])
  return str(d)


def _import(tmp_path, head_stats_dir, av="av_flow_small.pt", dyadic=False, **kw):
  files = official_import.ReleaseFiles(av=_fixture(av),
                                       head_vae=_fixture("head_vae_iter-0500000.pt"),
                                       head_stats=head_stats_dir)
  return official_import.import_release(files, str(tmp_path / "run"), _config(dyadic),
                                        log=lambda *_: None, **kw)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, head_stats_dir):
  return _import(tmp_path_factory.mktemp("plain"), head_stats_dir)


@pytest.fixture(scope="module")
def dyadic_run(tmp_path_factory, head_stats_dir):
  return _import(tmp_path_factory.mktemp("dyadic"), head_stats_dir, av="av_flow_small_dyadic.pt",
                 dyadic=True)


def _model_state(path):
  obj = torch_reader.read_torch_checkpoint(path)
  return obj["model_state_dict"]


@pytest.mark.parametrize("run_name,io_name", [("plain_run", "av_flow_small_io.npz"),
                                              ("dyadic_run", "av_flow_small_dyadic_io.npz")])
def test_imported_forward_and_sample_match_the_official_outputs(run_name, io_name, request):
  run = request.getfixturevalue(run_name)
  io = np.load(_fixture(io_name))
  avatar = avatar_lib.Avatar.load(run)
  loaded = avatar.loaded
  vis = loaded.model.visual_dim
  x = io["x"]
  vv, va = loaded.model.apply({"params": loaded.params["av"]}, x[..., :vis], x[..., vis:],
                              io["cond"], io["t"])
  out = np.concatenate([np.asarray(vv), np.asarray(va)], -1)
  np.testing.assert_allclose(out, io["out"], atol=1e-5, rtol=0)

  # The official 8-step sample from its stored noise, through the project's sampler.
  tokens = io["sample_tokens"][0]
  participant = None
  if loaded.uses_participant:
    participant = np.concatenate([tokens, io["sample_other_expr"][0],
                                  io["sample_other_head"][0]], -1)
  got = avatar.sample_motion(tokens, noise=io["sample_x0"][0], num_steps=8,
                             participant=participant)
  mel = io["sample_melspec"][0] * official_import.MEL_STD + official_import.MEL_MEAN
  np.testing.assert_allclose(got["mel"][0], mel, atol=1e-4, rtol=0)
  np.testing.assert_allclose(got["face"][0], io["sample_expr_code"][0], atol=1e-4, rtol=0)
  head = got["head"][0]
  np.testing.assert_allclose(head[:, 4:], io["sample_head_t"][0], atol=1e-4, rtol=0)
  np.testing.assert_allclose(_quat_to_rot(head[:, :4]), io["sample_head_R"][0], atol=1e-4,
                             rtol=0)


def _quat_to_rot(q):
  w, x, y, z = np.moveaxis(q / np.linalg.norm(q, axis=-1, keepdims=True), -1, 0)
  return np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
                   np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
                   np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1)],
                  -2)


def test_official_token_upsampling():
  io = np.load(_fixture("av_flow_small_io.npz"))
  got = align.official_token_upsample(io["sample_tokens_49_99fps"][0])
  assert got.shape == io["sample_tokens"][0].shape
  # torch computes the source positions in float32, we in float64: 3.4e-5 at most here.
  np.testing.assert_allclose(got, io["sample_tokens"][0], atol=5e-5, rtol=0)


def test_imported_head_vae_encodes_and_decodes_as_the_official(plain_run):
  avatar = avatar_lib.Avatar.load(plain_run)
  vae, params = avatar.loaded.head_vae, avatar.loaded.params["head_vae"]
  io = np.load(_fixture("head_vae_io.npz"))
  mu, log_var = vae.apply({"params": params}, io["headvec"], method=vae.encode)
  np.testing.assert_allclose(mu, io["mu"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(log_var, io["log_var"], atol=1e-5, rtol=0)
  np.testing.assert_allclose(vae.apply({"params": params}, io["z"], method=vae.decode),
                             io["decode_z"], atol=1e-5, rtol=0)


def test_imported_run_records_the_official_normalisation(plain_run):
  avatar = avatar_lib.Avatar.load(plain_run)
  stats = avatar.loaded.manifest["stats"]
  assert stats["mel"]["mean"] == [official_import.MEL_MEAN] * 80
  assert stats["face"]["std"] == [1.0] * 256 and stats["tokens"]["mean"] == [0.0] * 29
  io = np.load(_fixture("head_vae_io.npz"))
  np.testing.assert_allclose(stats["head"]["std"], np.concatenate(
      [io["head_qvec_std"], io["head_translation_std"]]), rtol=1e-6)
  assert avatar.loaded.step == 1_000_000 and not avatar.loaded.uses_participant
  assert avatar.loaded.config.loss.mel_weight == 0.2  # configs/official_50h.py
  # Evaluating on a dataset (--data-dir) keeps the official statistics, not the dataset's.
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top
  shards = synthetic.write_synthetic_shards(os.path.join(plain_run, "..", "shards"), n_train=2,
                                            n_val=1, frames=40)
  on_data = avatar_lib.Avatar.load(plain_run, data_dir=shards).loaded
  assert on_data.data_dir == os.path.abspath(shards)
  assert on_data.manifest["stats"] == stats


def test_export_round_trip_is_bit_exact(plain_run, tmp_path):
  out = tmp_path / "exported.pt"
  head = tmp_path / "head_vae.pt"
  official_export.export_run(plain_run, str(out), head_vae_output=str(head), log=lambda *_: None)
  for path, fixture in ((out, "av_flow_small.pt"), (head, "head_vae_iter-0500000.pt")):
    want = _model_state(_fixture(fixture))
    obj = torch_reader.read_torch_checkpoint(str(path))
    got = obj["model_state_dict"]
    assert list(got) == list(want)  # The official module order.
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    groups = obj["optimizer_state_dict"]["param_groups"]
    assert obj["optimizer_state_dict"]["state"] == {} and groups[0]["params"] == list(
        range(len(want)))
    assert groups[0]["betas"] == (0.9, 0.98) and groups[0]["eps"] == 1e-9
  assert torch_reader.read_torch_checkpoint(str(out))["iteration"] == 1_000_000


def test_export_loads_with_torch_in_the_official_layout(plain_run, tmp_path):
  torch = pytest.importorskip("torch")
  out = tmp_path / "exported.pt"
  official_export.export_run(plain_run, str(out), log=lambda *_: None)
  got = torch.load(str(out), weights_only=True)
  want = torch.load(_fixture("av_flow_small.pt"), map_location="cpu", weights_only=True)
  assert set(got) == {"iteration", "model_state_dict", "optimizer_state_dict"}
  assert list(got["model_state_dict"]) == list(want["model_state_dict"])
  for k, v in want["model_state_dict"].items():
    assert torch.equal(got["model_state_dict"][k], v), k


def test_export_warns_when_the_run_is_not_officially_normalised():
  stats = {"mel": {"mean": [-4.0] * 80, "std": [2.0] * 80},
           "tokens": {"mean": [0.0] * 29, "std": [1.0] * 29},
           "face": {"mean": [0.1] * 256, "std": [1.0] * 256}}
  assert official_export.stats_differences(stats) == ["mel", "face"]


def _rewrite(src, dst, change):
  obj = torch_reader.read_torch_checkpoint(src)
  change(obj["model_state_dict"])
  torch_writer.write_torch_checkpoint(str(dst), obj)
  return str(dst)


@pytest.mark.parametrize("change,needle", [
    (lambda sd: sd.pop("diffusion_module.out_a.bias"), "diffusion_module.out_a.bias"),
    (lambda sd: sd.update({"diffusion_module.extra.weight": np.zeros(3, np.float32)}),
     "diffusion_module.extra.weight"),
    (lambda sd: sd.update({"diffusion_module.fusion.1.weight": np.zeros((128, 64), np.float32)}),
     "diffusion_module.fusion.1.weight"),
])
def test_bad_av_files_name_the_key_and_write_nothing(tmp_path, head_stats_dir, change, needle):
  bad = _rewrite(_fixture("av_flow_small.pt"), tmp_path / "bad.pt", change)
  files = official_import.ReleaseFiles(av=bad, head_vae=_fixture("head_vae_iter-0500000.pt"),
                                       head_stats=head_stats_dir)
  with pytest.raises(AvatarError, match=needle.replace(".", r"\.")) as e:
    official_import.import_release(files, str(tmp_path / "run"), _config(), log=lambda *_: None)
  assert "\n" not in str(e.value) and bad in str(e.value)
  assert sorted(os.listdir(tmp_path)) == ["bad.pt"]  # No run directory, no partial one.


def test_foreign_and_hostile_files_are_refused(tmp_path, head_stats_dir):
  foreign = tmp_path / "foreign.pt"
  with zipfile.ZipFile(foreign, "w") as z:
    z.writestr("x/readme.txt", "not a checkpoint")
  hostile = tmp_path / "hostile.pt"
  import pickle  # pylint: disable=g-import-not-at-top

  class Evil:
    def __reduce__(self):
      return (os.system, ("touch " + str(tmp_path / "pwned"),))

  with zipfile.ZipFile(hostile, "w") as z:
    z.writestr("hostile/data.pkl", pickle.dumps({"model_state_dict": Evil()}, protocol=2))
  for path in (foreign, hostile, tmp_path / "missing.pt"):
    files = official_import.ReleaseFiles(av=str(path), head_vae=_fixture(
        "head_vae_iter-0500000.pt"), head_stats=head_stats_dir)
    with pytest.raises(AvatarError, match=str(path).replace(".", r"\.")):
      official_import.import_release(files, str(tmp_path / "run"), _config(),
                                     log=lambda *_: None)
  assert not os.path.exists(tmp_path / "pwned") and not os.path.exists(tmp_path / "run")


def test_dyadic_mismatch_and_missing_head_stats(tmp_path, head_stats_dir):
  files = official_import.ReleaseFiles(av=_fixture("av_flow_small.pt"),
                                       head_vae=_fixture("head_vae_iter-0500000.pt"),
                                       head_stats=head_stats_dir)
  with pytest.raises(AvatarError, match="conditioning width 29 says plain"):
    official_import.import_release(files, str(tmp_path / "a"), _config(), dyadic=True,
                                   log=lambda *_: None)
  files.head_stats = None
  with pytest.raises(AvatarError, match="headpose_normstats"):
    official_import.import_release(files, str(tmp_path / "b"), _config(), log=lambda *_: None)
  assert not os.listdir(tmp_path)


def test_find_release_files_by_their_official_names(tmp_path, head_stats_dir):
  rel = tmp_path / "release"
  (rel / "head_vae").mkdir(parents=True)
  (rel / "50h_dataset" / "headpose" / "headpose_normstats").mkdir(parents=True)
  for name in ("av_flow_ckpt_50h.pt", "head_vae/iter-0500000.pt", "text_to_tokens.pth"):
    (rel / name).write_bytes(b"")
  for name in official_import.HEAD_STATS:
    (rel / "50h_dataset" / "headpose" / "headpose_normstats" / f"{name}.npy").write_bytes(b"")
  found = official_import.find_release_files(str(rel))
  assert found.av.endswith("av_flow_ckpt_50h.pt")
  assert found.head_vae.endswith("head_vae/iter-0500000.pt")
  assert found.text_to_tokens.endswith("text_to_tokens.pth")
  assert found.head_stats.endswith("headpose_normstats")
  with pytest.raises(AvatarError, match="no av_flow_ckpt"):
    official_import.find_release_files(str(tmp_path / "release" / "head_vae"))


def test_mapping_round_trip_and_architecture():
  state = _model_state(_fixture("av_flow_small_dyadic.pt"))
  arch = official_keys.av_architecture(state)
  assert arch == {"d_model": 64, "hidden_dim": 128, "num_layers": 3, "visual": 264,
                  "audio": 80, "cond": 116, "cond_audio": 116}
  params = jax.tree.map(np.asarray, official_keys.av_params_from_official(
      state, _tree_from_state(state)))
  back = official_keys.official_from_av_params(params)
  assert list(back) == list(state)
  for k in state:
    np.testing.assert_array_equal(back[k], state[k])


def _tree_from_state(state):
  """The parameter tree shapes the mapping must produce (from the official shapes)."""
  out = {}
  for path, name in official_keys._av_linears(3):  # pylint: disable=protected-access
    leaf = out
    for p in path[:-1]:
      leaf = leaf.setdefault(p, {})
    leaf[path[-1]] = {"kernel": np.zeros(state[name + ".weight"].shape[::-1]),
                      "bias": np.zeros(state[name + ".bias"].shape)}
  return out


def test_commands_import_and_replay_the_official_sample(tmp_path, head_stats_dir, capsys):
  from avflow_jax import import_official  # pylint: disable=g-import-not-at-top
  from avflow_jax import sample  # pylint: disable=g-import-not-at-top
  config = os.path.join(ROOT, "configs", "official_50h.py")
  run = str(tmp_path / "run")
  base = ["--config", config, "--workdir", run, "--head-vae",
          _fixture("head_vae_iter-0500000.pt"), "--head-stats", head_stats_dir]
  assert import_official.main(base + ["--av", str(tmp_path / "nope.pt")]) == 2
  err = capsys.readouterr().err.strip()
  assert err.count("\n") == 0 and "nope.pt: file missing" in err and not os.path.exists(run)
  assert import_official.main(base + ["--av", _fixture("av_flow_small.pt")]) == 0
  assert os.path.exists(os.path.join(run, "config.json"))
  # The replay needs the fixture's per-layer windows (not recorded in official files).
  run = str(tmp_path / "run_windows")
  io = np.load(_fixture("av_flow_small_io.npz"))
  tokens, noise = tmp_path / "tokens.npy", tmp_path / "noise.npy"
  np.save(tokens, io["sample_tokens"][0])
  np.save(noise, io["sample_x0"][0])
  run = official_import.import_release(official_import.ReleaseFiles(
      av=_fixture("av_flow_small.pt"), head_vae=_fixture("head_vae_iter-0500000.pt"),
      head_stats=head_stats_dir), run, _config(), log=lambda *_: None)
  out = tmp_path / "out"
  assert sample.main(["--workdir", run, "--tokens", str(tokens), "--noise", str(noise),
                      "--official", "--steps", "8", "--output", str(out)]) == 0
  got = np.load(out / "tokens.npz")
  mel = io["sample_melspec"][0] * official_import.MEL_STD + official_import.MEL_MEAN
  np.testing.assert_allclose(got["mel"], mel, atol=1e-4, rtol=0)
  assert not bool(got["clipped"])


def test_imported_text_to_tokens_run_loads_with_the_file_statistics(tmp_path, head_stats_dir):
  from avflow_jax.inference import text_tokens  # pylint: disable=g-import-not-at-top
  from avflow_jax.models import t2t_synthesis  # pylint: disable=g-import-not-at-top
  files = official_import.ReleaseFiles(
      av=_fixture("av_flow_small.pt"), head_vae=_fixture("head_vae_iter-0500000.pt"),
      text_to_tokens=_fixture("text_to_tokens_small.pth"), head_stats=head_stats_dir)
  run = official_import.import_release(files, str(tmp_path / "run"), _config(),
                                       log=lambda *_: None)
  t2t = text_tokens.load_text_to_tokens(os.path.join(run, official_import.T2T_DIR))
  assert abs(t2t.token_mean - (-2.8461)) < 1e-4 and abs(t2t.token_std - 4.5255) < 1e-4
  io = np.load(_fixture("text_to_tokens_small_io.npz"))
  ids = np.asarray(io["ids"], np.int32)
  n = t2t_synthesis.predict_lengths(t2t.params, t2t.model, ids,
                                    np.asarray(io["ids_len"], np.int32), 1.0)
  assert int(n[0]) == int(io["y_length"])
  out = text_tokens.tokens_from_ids(ids[0], t2t, seed=0)
  assert out.shape == (int(io["y_length"]), 29) and np.isfinite(out).all()
