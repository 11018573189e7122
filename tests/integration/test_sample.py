"""The sampling CLI: outputs for tokens / audio / --compare, atomic output, one-line errors."""

import json
import os
import shutil
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
from PIL import Image
import pytest
import soundfile

from avflow_jax import sample
from avflow_jax.core import constants as C
from avflow_jax.data import clips
from avflow_jax.inference import render
from tests import fixtures
from tests.integration import test_api

pytestmark = pytest.mark.filterwarnings("ignore:os.fork")  # ffmpeg and CLI subprocesses.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def workdir(tiny_shards):
  return test_api.avatar_workdir(tiny_shards)


@pytest.fixture(scope="module")
def tokens_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("inputs") / "clip.npy")
  np.save(path, np.random.default_rng(0).normal(size=(120, C.TOKEN_DIM)).astype(np.float32))
  return path


def _mp4_info(path):
  """(frames, meta) of an mp4, decoding every frame."""
  reader = imageio_ffmpeg.read_frames(path)
  meta = next(reader)
  frames = sum(1 for _ in reader)
  return frames, meta


def check_sample_files(out_dir, name, frames, panels=1, rig=False):
  """The four files exist, decode, and agree in duration within one video frame."""
  wav, sr = soundfile.read(os.path.join(out_dir, name + ".wav"))
  assert sr == C.SAMPLE_RATE and wav.shape == (frames * C.HOP_LENGTH,)
  seconds = wav.shape[0] / sr
  with np.load(os.path.join(out_dir, name + ".npz"), allow_pickle=False) as z:
    npz = {k: z[k] for k in z.files}
  assert npz["mel"].shape == (frames, 80) and npz["face"].shape == (frames, 256)
  assert npz["head"].shape == (frames, 7)
  assert npz["mel"].shape[0] / C.FRAME_RATE == pytest.approx(seconds)
  n30 = npz["face_30fps"].shape[0]
  assert npz["head_30fps"].shape == (n30, 7)
  assert abs(n30 / 30.0 - seconds) <= 1 / 30.0
  assert ("rig" in npz) == rig and ("rig_30fps" in npz) == rig
  if rig:
    assert npz["rig"].shape == (frames, 6) and npz["rig_30fps"].shape == (n30, 6)
    assert list(npz["rig_channels"]) == list(render.RIG_CHANNELS)
  video_frames, meta = _mp4_info(os.path.join(out_dir, name + ".mp4"))
  assert video_frames == n30
  assert meta["fps"] == 30.0 and meta["audio_codec"] == "aac"
  assert meta["size"] == (256 * panels, 256)
  assert abs(meta["duration"] - seconds) <= 1 / 30.0 + 0.03  # container rounding (10 ms)
  with Image.open(os.path.join(out_dir, name + ".png")) as im:
    im.load()
    assert im.size[0] > 100 and im.size[1] > 100
  return npz


def _no_leftovers(output):
  """Hidden staging entries left next to `output` (in its nearest existing directory)."""
  output = os.path.abspath(output)
  parent = os.path.dirname(output)
  while not os.path.isdir(parent):
    parent = os.path.dirname(parent)
  base = os.path.basename(output)
  return [n for n in os.listdir(parent) if n.startswith("." + base) or "partial" in n]


def test_cli_tokens_end_to_end(workdir, tokens_file, tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, "-m", "avflow_jax.sample", "--workdir", workdir, "--tokens", tokens_file,
       "--output", str(out), "--steps", "2", "--seed", "1"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "Traceback" not in proc.stderr
  assert sorted(os.listdir(out)) == ["clip.mp4", "clip.npz", "clip.png", "clip.wav"]
  npz = check_sample_files(str(out), "clip", 120)
  np.testing.assert_array_equal(npz["tokens"], np.load(tokens_file))
  assert int(npz["seed"]) == 1 and int(npz["num_steps"]) == 2
  assert not _no_leftovers(str(out))


def test_cli_compare_with_two_samples(workdir, tmp_path, capsys):
  out = tmp_path / "cmp"
  out.mkdir()
  (out / "keep.txt").write_text("x")  # An existing output dir keeps its other files.
  rc = sample.main(["--workdir", workdir, "--compare", "val001", "--num-samples", "2",
                    "--steps", "2", "--output", str(out), "--name", "gt"])
  assert rc == 0, capsys.readouterr().err
  assert sorted(os.listdir(out)) == sorted(
      ["keep.txt"] + [f"gt_{k}.{e}" for k in (0, 1) for e in ("mp4", "npz", "png", "wav")])
  a = check_sample_files(str(out), "gt_0", 127, panels=2)
  b = check_sample_files(str(out), "gt_1", 127, panels=2)
  assert not np.allclose(a["mel"], b["mel"])  # Two different samples of the same input.
  assert int(a["sample_index"]) == 0 and int(b["sample_index"]) == 1
  from avflow_jax.inference import loading  # pylint: disable=g-import-not-at-top
  loaded = loading.load_avatar(workdir)
  rec = clips.read_clip(loaded.data_dir, loaded.manifest, "val001")
  np.testing.assert_array_equal(a["tokens"], rec["tokens"])  # The clip's tokens were the input.
  assert not _no_leftovers(str(out))


def _tiny_wav2vec2(directory):
  """A random-weight wav2vec2 (hop 320 like the base model) saved as a HF safetensors."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

  from avflow_jax.models import wav2vec2 as w2v  # pylint: disable=g-import-not-at-top
  from avflow_jax.models import wav2vec2_checkpoint  # pylint: disable=g-import-not-at-top
  hf = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
            conv_dim=[16, 16, 16], conv_kernel=[10, 8, 4], conv_stride=[5, 8, 8],
            num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, conv_bias=False,
            vocab_size=32, feat_extract_norm="group", do_stable_layer_norm=False)
  cfg = wav2vec2_checkpoint.config_from_hf_dict(hf)
  params = w2v.init_params(cfg, seed=0)
  state = {}
  expected = wav2vec2_checkpoint._expected_keys(cfg)  # pylint: disable=protected-access
  for name, (path, fn, shape) in expected.items():
    leaf = params
    for p in path:
      leaf = leaf[p]
    leaf = np.asarray(leaf, np.float32)
    if fn is wav2vec2_checkpoint._linear:  # pylint: disable=protected-access
      leaf = leaf.T
    elif fn is wav2vec2_checkpoint._conv:  # pylint: disable=protected-access
      leaf = leaf.transpose(2, 1, 0)
    state[name] = np.ascontiguousarray(leaf)
    assert state[name].shape == shape, name
  v = np.asarray(params["pos_conv_embed"]["kernel"], np.float32).transpose(2, 1, 0)
  pos = "wav2vec2.encoder.pos_conv_embed.conv."
  state[pos + "weight_v"] = np.ascontiguousarray(v)
  state[pos + "weight_g"] = np.sqrt((v ** 2).sum(axis=(0, 1), keepdims=True))
  os.makedirs(directory, exist_ok=True)
  save_file(state, os.path.join(directory, "model.safetensors"))
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(hf, f)
  return os.path.join(directory, "model.safetensors")


def test_cli_audio_input_with_face_rig(workdir, tiny_shards, tmp_path, capsys):
  pytest.importorskip("data_prep.asr")
  weights = _tiny_wav2vec2(str(tmp_path / "w2v"))
  sr = 16000
  n = int(1.3 * sr)
  rng = np.random.default_rng(0)
  wav = (0.3 * np.sin(2 * np.pi * 180 * np.arange(n) / sr) * rng.uniform(0.5, 1, n))
  wav_path = str(tmp_path / "speech.wav")
  soundfile.write(wav_path, wav.astype(np.float32), sr)
  rig_dir = test_api.rig_data_dir(tiny_shards, str(tmp_path / "rigdata"))
  out = tmp_path / "audio_out"
  rc = sample.main(["--workdir", workdir, "--audio", wav_path, "--asr-weights", weights,
                    "--output", str(out), "--steps", "2", "--data-dir", rig_dir])
  assert rc == 0, capsys.readouterr().err
  frames = int(round(n * C.SAMPLE_RATE / sr)) // C.HOP_LENGTH  # The 22.05 kHz mel grid.
  npz = check_sample_files(str(out), "speech", frames, rig=True)
  assert npz["tokens"].shape == (frames, C.TOKEN_DIM) and np.isfinite(npz["tokens"]).all()
  assert npz["tokens"].std(0).max() > 0  # Real logits, not a constant fill.


def _write_bad_inputs(root, workdir):
  """Files for the bad-input cases."""
  paths = {}
  paths["tokens30"] = os.path.join(root, "tokens30.npy")
  np.save(paths["tokens30"], np.zeros((50, 30), np.float32))
  paths["pickled"] = os.path.join(root, "pickled.npy")
  np.save(paths["pickled"], np.array([{"a": 1}], dtype=object), allow_pickle=True)
  paths["silent"] = os.path.join(root, "silent.wav")
  soundfile.write(paths["silent"], np.zeros(22050, np.float32), 22050)
  paths["corrupt"] = os.path.join(root, "corrupt.wav")
  soundfile.write(paths["corrupt"], 0.1 * np.ones(22050, np.float32), 22050)
  with open(paths["corrupt"], "r+b") as f:  # Truncate the data chunk: a broken copy.
    f.truncate(2000)
  paths["garbage"] = os.path.join(root, "garbage.wav")
  with open(paths["garbage"], "wb") as f:
    f.write(b"this is not audio at all" * 10)
  paths["file"] = os.path.join(root, "a_file")
  with open(paths["file"], "w") as f:
    f.write("x")
  paths["weights"] = paths["file"]  # Any existing file: the audio is rejected before loading.
  paths["bad_weights"] = os.path.join(root, "bad.safetensors")
  with open(paths["bad_weights"], "wb") as f:
    f.write(b"\xff" * 64)
  no_ckpt = os.path.join(root, "no_ckpt")
  os.makedirs(no_ckpt)
  shutil.copy(os.path.join(workdir, "config.json"), no_ckpt)
  paths["no_ckpt"] = no_ckpt
  moved = os.path.join(root, "moved")
  shutil.copytree(workdir, moved)
  with open(os.path.join(moved, "config.json")) as f:
    cfg = json.load(f)
  cfg["data"]["dir"] = os.path.join(root, "gone")
  with open(os.path.join(moved, "config.json"), "w") as f:
    json.dump(cfg, f)
  paths["moved"] = moved
  return paths


BAD_CASES = {
    # name: (args with {placeholders}, expected message fragment)
    "missing_workdir": (["--workdir", "{root}/nope", "--tokens", "{tokens}"],
                        "no such directory"),
    "missing_checkpoint": (["--workdir", "{no_ckpt}", "--tokens", "{tokens}"],
                           "no checkpoints"),
    "data_dir_moved": (["--workdir", "{moved}", "--tokens", "{tokens}"],
                       "gone/manifest.json: missing"),
    "tokens_wrong_width": (["--workdir", "{workdir}", "--tokens", "{tokens30}"],
                           "expected shape (T, 29)"),
    "tokens_pickled": (["--workdir", "{workdir}", "--tokens", "{pickled}"],
                       "not a readable .npy"),
    "tokens_missing": (["--workdir", "{workdir}", "--tokens", "{root}/none.npy"],
                       "file missing"),
    "empty_text": (["--workdir", "{workdir}", "--text", "", "--t2t-workdir", "{workdir}"],
                   "--text is empty"),
    "blank_text": (["--workdir", "{workdir}", "--text", "   "], "--text is empty"),
    "text_without_t2t": (["--workdir", "{workdir}", "--text", "hello"],
                         "--text needs --t2t-workdir"),
    "audio_without_asr": (["--workdir", "{workdir}", "--audio", "{silent}"],
                          "--audio needs --asr-weights"),
    "silent_audio": (["--workdir", "{workdir}", "--audio", "{silent}", "--asr-weights",
                      "{weights}"], "silent"),
    "truncated_audio": (["--workdir", "{workdir}", "--audio", "{corrupt}", "--asr-weights",
                         "{weights}"], "truncated wav"),
    "garbage_audio": (["--workdir", "{workdir}", "--audio", "{garbage}", "--asr-weights",
                       "{weights}"], "unreadable audio"),
    "output_under_a_file": (["--workdir", "{workdir}", "--tokens", "{tokens}", "--output",
                             "{file}/out"], "cannot be created"),
    "output_is_a_file": (["--workdir", "{workdir}", "--tokens", "{tokens}", "--output",
                          "{file}"], "exists and is not a directory"),
    "corrupt_vocoder_weights": (["--workdir", "{workdir}", "--tokens", "{tokens}",
                                 "--vocoder-weights", "{bad_weights}"], "cannot load BigVGAN"),
    "missing_vocoder_weights": (["--workdir", "{workdir}", "--tokens", "{tokens}",
                                 "--vocoder-weights", "{root}/none.safetensors"],
                                "file missing"),
    "unknown_clip": (["--workdir", "{workdir}", "--compare", "nope"], "'nope' is not in"),
    "no_input": (["--workdir", "{workdir}"], "give an input"),
    # The length is checked before the model loads (here: a workdir without checkpoints).
    "tokens_too_long": (["--workdir", "{no_ckpt}", "--tokens", "{tokens}", "--max-seconds", "1"],
                        "is 1.4 s (120 frames), longer than the sampling limit of 1 s"),
    "bad_max_seconds": (["--workdir", "{workdir}", "--tokens", "{tokens}", "--max-seconds", "0"],
                        "--max-seconds 0.0: must be a number of seconds > 0"),
    "two_inputs": (["--workdir", "{workdir}", "--tokens", "{tokens}", "--audio", "{silent}"],
                   "not allowed with"),
}


@pytest.fixture(scope="module")
def bad_inputs(workdir, tokens_file, tmp_path_factory):
  root = str(tmp_path_factory.mktemp("bad"))
  paths = _write_bad_inputs(root, workdir)
  paths.update(root=root, workdir=workdir, tokens=tokens_file)
  return paths


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_one_line_exit_2_nothing_written(case, bad_inputs, capsys):
  args, fragment = BAD_CASES[case]
  args = [a.format(**bad_inputs) for a in args]
  if "--output" not in args:
    args += ["--output", os.path.join(bad_inputs["root"], "out_" + case)]
  output = args[args.index("--output") + 1]
  existed = os.path.exists(output)
  assert sample.main(args) == 2
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
  assert os.path.exists(output) == existed  # Nothing created under the output name...
  assert not _no_leftovers(output)  # ...and no staging directory left behind.


def test_bad_input_subprocess_has_no_traceback(bad_inputs):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  out = os.path.join(bad_inputs["root"], "sub_out")
  proc = subprocess.run(
      [sys.executable, "-m", "avflow_jax.sample", "--workdir", bad_inputs["workdir"], "--tokens",
       bad_inputs["tokens30"], "--output", out], cwd=REPO, env=env, capture_output=True,
      text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"error: --tokens {bad_inputs['tokens30']}: expected shape (T, 29) (raw ASR logits on "
      "the 86.13 fps mel grid), got (50, 30)"]
  assert not os.path.exists(out)


def test_failure_while_writing_leaves_nothing(workdir, tokens_file, tmp_path, monkeypatch):
  def broken(*args, **kwargs):
    raise RuntimeError("ffmpeg exploded")
  monkeypatch.setattr(render, "render_preview", broken)
  out = tmp_path / "new_out"
  with pytest.raises(RuntimeError, match="exploded"):
    sample.main(["--workdir", workdir, "--tokens", tokens_file, "--output", str(out),
                 "--steps", "1"])
  assert not out.exists() and not _no_leftovers(str(out))
  old = tmp_path / "old_out"
  old.mkdir()
  (old / "clip.wav").write_bytes(b"old")
  with pytest.raises(RuntimeError):
    sample.main(["--workdir", workdir, "--tokens", tokens_file, "--output", str(old),
                 "--steps", "1"])
  assert os.listdir(old) == ["clip.wav"] and (old / "clip.wav").read_bytes() == b"old"
  assert not _no_leftovers(str(old))


@pytest.mark.slow
def test_trained_run_round_trip(tiny_shards, tokens_file, tmp_path, capsys):
  """A workdir written by loop.train_and_evaluate (not init_workdir) samples too."""
  run = test_api.trained_workdir(tiny_shards, str(tmp_path))
  out = tmp_path / "trained_out"
  rc = sample.main(["--workdir", run, "--tokens", tokens_file, "--output", str(out),
                    "--steps", "2", "--which", "params"])
  assert rc == 0, capsys.readouterr().err
  check_sample_files(str(out), "clip", 120)


def test_cli_text_input(workdir, tiny_shards, tmp_path, capsys):
  pytest.importorskip("avflow_jax.models.text_to_tokens")
  t2t = fixtures.random_t2t_workdir(str(tmp_path / "t2t"), tiny_shards)
  out = tmp_path / "text_out"
  rc = sample.main(["--workdir", workdir, "--text", "Hello there.", "--t2t-workdir", t2t,
                    "--output", str(out), "--steps", "1"])
  assert rc == 0, capsys.readouterr().err
  with np.load(out / "text.npz") as z:
    frames = z["tokens"].shape[0]
    assert z["tokens"].shape[1] == C.TOKEN_DIM and np.isfinite(z["tokens"]).all()
  assert frames > 0
  check_sample_files(str(out), "text", frames)
  # An AV workdir is not a text-to-tokens run: one line, exit 2.
  rc = sample.main(["--workdir", workdir, "--text", "Hi.", "--t2t-workdir", workdir,
                    "--output", str(tmp_path / "bad")])
  assert rc == 2 and "not a 'text_to_tokens' run" in capsys.readouterr().err
