"""End-to-end tests of `python -m data_prep` on tiny corpora of every layout."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from avflow_jax.core import audio as audio_lib
from avflow_jax.core import constants as C
from avflow_jax.data import clips as clips_lib
from data_prep import inspect as inspect_lib
from data_prep import mel as mel_lib
from data_prep import prepare
from data_prep import synthetic as fx
from tests import fixtures

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(fmt, inp, out, *extra):
  return prepare.main(["--format", fmt, "--input", str(inp), "--output", str(out),
                       "--workers", "1", "--no-progress", *extra])


def load(out):
  with open(os.path.join(out, "manifest.json")) as f:
    manifest = json.load(f)
  clips = {}
  for split in manifest["splits"]:
    shards, entries = clips_lib.split_entries(str(out), manifest, split)
    for entry, clip in clips_lib.iter_split_records(shards, entries,
                                                    clips_lib.page_frames(manifest)):
      clip["_split"] = split
      clips[entry["name"]] = clip
  return manifest, clips


def interp_time(x, rate, frames):
  """Independent reference: np.interp at the mel-frame centre times (edges clamp)."""
  t_src = (np.arange(x.shape[0]) + 0.5) / rate
  t_out = (np.arange(frames) + 0.5) / C.FRAME_RATE
  x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
  return np.stack([np.interp(t_out, t_src, x[:, d]) for d in range(x.shape[1])], -1)


def check_stats(manifest, clips, streams):
  train = [c for c in clips.values() if c["_split"] == "train"]
  for s in streams:
    if s == "face":
      x = np.concatenate([c["face"][c["face_mask"] > 0] for c in train]).astype(np.float64)
    else:
      x = np.concatenate([c[s] for c in train]).astype(np.float64)
    st = manifest["stats"][s]
    np.testing.assert_allclose(st["mean"], x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st["std"], np.maximum(x.std(0), 1e-5), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def a2p(tmp_path_factory):
  root = tmp_path_factory.mktemp("a2p")
  fx.make_a2p(str(root / "in"))
  out = str(root / "out")
  assert run("audio2photoreal", root / "in", out, "--shards", "2") == 0
  return str(root / "in"), out


def test_audio2photoreal_end_to_end(a2p, capsys):
  inp, out = a2p
  manifest, clips = load(out)
  assert manifest["source_format"] == "audio2photoreal" and manifest["head_kind"] == "a2p_4d"
  assert manifest["dims"] == {"mel": 80, "tokens": 29, "face": 256, "head": 4,
                              "participant": 0}
  assert manifest["frame_rate"] == C.FRAME_RATE
  assert [c["name"] for c in manifest["splits"]["train"]["clips"]] == [
      "PXB184_scene01", "PXB184_scene02"]
  assert [c["name"] for c in manifest["splits"]["val"]["clips"]] == [
      "PXB184_scene03", "PXB184_scene04"]
  assert manifest["splits"]["train"]["shards"] == ["train-g0001-00000-of-00002.array_record",
                                                   "train-g0001-00001-of-00002.array_record"]
  assert manifest["prep"]["generation"] == 1
  assert manifest["summary"]["clips_written"]["total"] == 4
  frames = 75 * 735 // 256  # 75 video frames = 2.5 s = 55125 samples at 22.05 kHz
  clip = clips["PXB184_scene01"]
  assert clip["mel"].shape == (frames, 80) and clip["audio"].shape == (frames * 256,)
  assert clip["audio"].dtype == np.int16
  for key in ("tokens", "face", "head", "face_mask"):
    assert clip[key].shape[0] == frames and clip[key].dtype == np.float32
  # The mel is that of the stored audio / 1.1; the audio is the 22.05 kHz actor channel.
  np.testing.assert_allclose(clip["mel"], mel_lib.clip_mel(audio_lib.from_int16(clip["audio"])),
                             atol=1e-5)
  ch0 = audio_lib.resample(fx.tone(2.5, 48000, 1, 2)[:, 0], 48000)
  assert np.abs(audio_lib.from_int16(clip["audio"]) - ch0[:frames * 256]).max() < 2e-4
  # Face: missing runs filled (edges take the nearest valid code), then 30 fps -> grid.
  codes = fx.face_codes(75, 1).astype(np.float64)
  codes[[0, 1]] = codes[2]
  codes[[30, 31]] = codes[29] + (codes[32] - codes[29]) * np.array([[1 / 3], [2 / 3]])
  codes[74] = codes[73]
  np.testing.assert_allclose(clip["face"], interp_time(codes, 30.0, frames), atol=1e-5)
  pos = np.clip(((np.arange(frames) + 0.5) * 30.0 / C.FRAME_RATE) - 0.5, 0, 74)
  lo, hi = np.floor(pos).astype(int), np.ceil(pos).astype(int)
  miss = np.isin(lo, [0, 1, 30, 31, 74]) | np.isin(hi, [0, 1, 30, 31, 74])
  np.testing.assert_array_equal(clip["face_mask"], (~miss).astype(np.float32))
  pose = np.sin(0.05 * np.arange(75)[:, None] + np.arange(4) + 1)
  np.testing.assert_allclose(clip["head"], interp_time(pose, 30.0, frames), atol=1e-5)
  # Tokens: channel 0 stretched over the video duration.
  tok = fx.token_file(fx.n_tokens(2.5), 1)[0]
  np.testing.assert_allclose(clip["tokens"], interp_time(tok, tok.shape[0] / 2.5, frames),
                             atol=1e-5)
  check_stats(manifest, clips, ("mel", "tokens", "face", "head"))
  # inspect: one JSON object, every record verified.
  capsys.readouterr()
  assert inspect_lib.main([out, "--no-progress"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["clips"] == {"train": 2, "val": 2}
  assert summary["records_verified"] == 4 and summary["dims"]["head"] == 4
  assert summary["frame_rate"] == C.FRAME_RATE


def test_avflow50h_participant_transcripts_rig(tmp_path):
  fx.make_avflow50h(str(tmp_path / "in"))
  out = str(tmp_path / "out")
  assert run("avflow50h", tmp_path / "in", out) == 0
  manifest, clips = load(out)
  assert manifest["val_dates"] == ["20230102", "20230103"]
  assert [c["name"] for c in manifest["splits"]["train"]["clips"]] == ["20230101_sess0"]
  assert manifest["dims"]["participant"] == 87 and manifest["head_kind"] == "quat_trans"
  assert manifest["face_decoder"] == "face_rig.npz"
  assert np.load(os.path.join(out, "face_rig.npz"))["w"].shape == (3, 3)
  frames = 60 * 735 // 256
  clip = clips["20230102_sess0"]
  assert clip["participant"].shape == (frames, 87) and clip["head"].shape == (frames, 7)
  # Head: [q, t] with unit q, w >= 0 at the start, matching the source rotation.
  np.testing.assert_allclose(np.linalg.norm(clip["head"][:, :4], axis=-1), 1.0, atol=1e-5)
  np.testing.assert_allclose(clip["head"][:, :4], interp_time(fx.head_quats(60, 2), 30, frames),
                             atol=2e-4)
  trans = 0.01 * np.arange(60)[:, None] + np.arange(3)[None]
  np.testing.assert_allclose(clip["head"][:, 4:], interp_time(trans, 30, frames), atol=1e-5)
  # Participant = [channel-1 tokens ; SMIRK min-max normalised with train-split min/max].
  tok = fx.token_file(fx.n_tokens(2.0), 2)[1]
  np.testing.assert_allclose(clip["participant"][:, :29], interp_time(tok, tok.shape[0] / 2.0,
                                                                     frames), atol=1e-5)
  norm = manifest["participant_norm"]
  assert norm["source"] == "computed over the train split"
  k = np.arange(60)[:, None]
  exp1 = 3.0 * np.sin(0.1 * k + np.arange(55)[None] + 1)
  np.testing.assert_allclose(norm["min"][:55], exp1.min(0), atol=1e-5)
  exp2 = 3.0 * np.sin(0.1 * k + np.arange(55)[None] + 2)
  want = 2 * (exp2 - exp1.min(0)) / (exp1.max(0) - exp1.min(0)) - 1
  np.testing.assert_allclose(clip["participant"][:, 29:84], interp_time(want, 30, frames),
                             atol=1e-4)
  train_p = clips["20230101_sess0"]["participant"][:, 29:]
  assert train_p.min() >= -1 - 1e-5 and train_p.max() <= 1 + 1e-5
  # Transcript: actor utterances in time order, frames on the mel grid.
  assert clip["text"] == "well hello there"
  assert json.loads(clip["utterances"]) == [
      {"text": "well", "start": round(0.1 * C.FRAME_RATE), "end": round(0.4 * C.FRAME_RATE)},
      {"text": "hello there", "start": round(0.5 * C.FRAME_RATE), "end": round(C.FRAME_RATE)}]
  check_stats(manifest, clips, ("mel", "tokens", "face", "head", "participant"))


def test_avflow50h_val_dates_and_stats_files(tmp_path):
  fx.make_avflow50h(str(tmp_path / "in"), stats_files=True, transcripts=False, rig=False)
  out = str(tmp_path / "out")
  assert run("avflow50h", tmp_path / "in", out, "--val-dates", "20230101") == 0
  manifest, clips = load(out)
  assert [c["name"] for c in manifest["splits"]["val"]["clips"]] == ["20230101_sess0"]
  assert len(manifest["splits"]["train"]["clips"]) == 2
  assert manifest["face_decoder"] is None and "text" not in clips["20230101_sess0"]
  assert "stats/expression" in manifest["participant_norm"]["source"]
  frames = 60 * 735 // 256
  exp1 = 3.0 * np.sin(0.1 * np.arange(60)[:, None] + np.arange(55)[None] + 1)
  np.testing.assert_allclose(clips["20230101_sess0"]["participant"][:, 29:84],
                             interp_time(exp1 / 3.0, 30, frames), atol=1e-5)
  assert run("avflow50h", tmp_path / "in", out, "--val-dates", "20991231") == 1


def test_generic_layout_with_splits(tmp_path, capsys):
  fx.make_generic(str(tmp_path / "in"), splits={"train": ["a", "b"], "val": ["c"]})
  out = str(tmp_path / "out")
  assert run("generic", tmp_path / "in", out) == 0
  manifest, clips = load(out)
  assert [c["name"] for c in manifest["splits"]["val"]["clips"]] == ["c"]
  assert manifest["dims"]["head"] == 4 and manifest["head_kind"] == "a2p_4d"
  frames = int(round(2.4 * 22050)) // 256
  clip = clips["a"]
  assert clip["face"].shape == (frames, 256) and clip["text"] == "clip a says hello"
  assert json.loads(clip["utterances"]) == [{"text": "clip a says hello", "start": 0,
                                             "end": frames}]
  np.testing.assert_allclose(clip["face"], interp_time(fx.face_codes(60, 0), 25.0, frames),
                             atol=1e-5)
  assert np.all(clip["face_mask"] == 1)
  check_stats(manifest, clips, ("mel", "tokens", "face", "head"))


def test_ljspeech_with_asr_port(tmp_path, monkeypatch):
  calls = []
  fixtures.install_fake_asr(monkeypatch, calls)
  ids = fx.make_ljspeech(str(tmp_path / "in"))
  out = str(tmp_path / "out")
  weights = tmp_path / "model.safetensors"
  weights.write_bytes(b"x")
  assert run("ljspeech", tmp_path / "in", out, "--val-fraction", "0.3") == 1  # no weights
  assert run("ljspeech", tmp_path / "in", out, "--val-fraction", "0.3",
             "--asr-weights", str(weights)) == 0
  assert calls[0] == ("load", str(weights)) and len(calls) == 4  # one load, 3 clips
  manifest, clips = load(out)
  assert manifest["dims"]["face"] == 0 and manifest["dims"]["head"] == 0
  assert manifest["head_kind"] is None and sorted(manifest["stats"]) == ["mel", "tokens"]
  assert [c["name"] for c in manifest["splits"]["val"]["clips"]] == [ids[-1]]
  clip = clips[ids[0]]
  assert set(clip) == {"name", "mel", "tokens", "audio", "text", "utterances", "_split"}
  frames = 44100 // 256
  assert clip["text"] == "text 0 normalised"
  assert json.loads(clip["utterances"])[0] == {"text": "text 0 normalised", "start": 0,
                                               "end": frames}
  n = fx.n_tokens(2.0)
  tok = np.linspace(-1, 1, n)[:, None] * (1 + np.arange(29))[None]
  np.testing.assert_allclose(clip["tokens"], interp_time(tok, n / 2.0, frames), atol=1e-5)
  assert inspect_lib.main([out, "--no-progress"]) == 0


def test_missing_tokens_is_a_clear_error(tmp_path, capsys, monkeypatch):
  fx.make_a2p(str(tmp_path / "in"), tokens=False)
  assert run("audio2photoreal", tmp_path / "in", tmp_path / "out") == 1
  err = capsys.readouterr().err
  assert "no ASR token file" in err and "--asr-weights" in err
  calls = []
  fixtures.install_fake_asr(monkeypatch, calls)
  weights = tmp_path / "w.safetensors"
  weights.write_bytes(b"x")
  assert run("audio2photoreal", tmp_path / "in", tmp_path / "out", "--asr-weights",
             str(weights)) == 0
  assert [c[0] for c in calls].count("extract") == 4 and calls[1][2] == 48000


def _corrupt_a2p(root):
  sub = os.path.join(root, "PXB184")
  base = lambda s: os.path.join(sub, f"scene{s:02d}")
  data = open(base(2) + "_audio.wav", "rb").read()
  open(base(2) + "_audio.wav", "wb").write(data[: len(data) * 2 // 3])  # truncated
  fx.write_wav(base(3) + "_audio.wav", fx.tone(2.5, 48000, 3, 1), 48000)  # mono
  np.save(base(4) + "_face_expression.npy", fx.face_codes(80, 4))  # 5 frames too long
  face = fx.face_codes(75, 5)
  face[10, 3] = np.nan
  np.save(base(5) + "_face_expression.npy", face)  # NaN
  np.save(base(6) + "_face_expression.npy", fx.face_codes(75, 6)[:, :255])  # wrong dims
  np.save(base(7) + "_missing_face_frames.npy", np.arange(75))  # all missing
  open(base(8) + "_audio.wav", "wb").write(b"RIFF garbage" * 50)  # unreadable
  return {2: ("truncated wav", "_audio.wav"), 3: ("wrong channel count", "_audio.wav"),
          4: ("duration mismatch", "_face_expression.npy"),
          5: ("NaN/Inf", "_face_expression.npy"), 6: ("wrong dims", "_face_expression.npy"),
          7: ("all face frames missing", "_missing_face_frames.npy"),
          8: ("unreadable audio", "_audio.wav")}


def test_bad_input_skipped_or_fatal(tmp_path, capsys):
  fx.make_a2p(str(tmp_path / "in"), scenes=10)
  expected = _corrupt_a2p(str(tmp_path / "in"))
  out = str(tmp_path / "out")
  assert run("audio2photoreal", tmp_path / "in", out) == 0
  manifest, clips = load(out)
  assert sorted(clips) == ["PXB184_scene01", "PXB184_scene09", "PXB184_scene10"]
  skipped = {s["clip"]: s["reason"] for s in manifest["skipped"]}
  assert len(skipped) == 7
  for scene, (kind, suffix) in expected.items():
    reason = skipped[f"PXB184_scene{scene:02d}"]
    assert f"scene{scene:02d}{suffix}" in reason, reason
  assert manifest["summary"]["skipped_by_reason"] == {k: 1 for k, _ in expected.values()}
  printed = capsys.readouterr().out
  assert "clips skipped: 7" in printed and "scene04_face_expression.npy" in printed
  assert run("audio2photoreal", tmp_path / "in", tmp_path / "strict", "--strict") == 1
  assert "--strict" in capsys.readouterr().err
  assert not glob.glob(str(tmp_path / "strict" / "*.array_record"))


def test_rerun_resumes_and_interrupt_leaves_no_partial_shard(tmp_path, monkeypatch, capsys):
  inp, out = str(tmp_path / "in"), str(tmp_path / "out")
  fx.make_a2p(inp)
  # 1) Ctrl-C after the first clip: nothing under a final name, one clip cached.
  real = prepare.process_clip
  count = {"n": 0}

  def interrupted(job):
    count["n"] += 1
    if count["n"] == 2:
      raise KeyboardInterrupt
    return real(job)

  monkeypatch.setattr(prepare, "process_clip", interrupted)
  assert run("audio2photoreal", inp, out) == 130
  assert not glob.glob(os.path.join(out, "*.array_record"))
  assert not os.path.exists(os.path.join(out, "manifest.json"))
  assert len(glob.glob(os.path.join(out, ".cache", "*.meta"))) == 1
  monkeypatch.setattr(prepare, "process_clip", real)
  # 2) Ctrl-C while writing shards: no shard of the unfinished generation (nor any
  # temporary) stays; only the lock file and the cache remain.
  from data_prep import cache as cache_lib
  real_record = cache_lib.ClipCache.record
  reads = {"n": 0}

  def record(self, key):
    reads["n"] += 1
    if reads["n"] == 4:
      raise KeyboardInterrupt
    return real_record(self, key)

  monkeypatch.setattr(cache_lib.ClipCache, "record", record)
  assert run("audio2photoreal", inp, out) == 130
  assert sorted(os.listdir(out)) == [".avflow.lock", ".cache"]
  monkeypatch.setattr(cache_lib.ClipCache, "record", real_record)
  capsys.readouterr()
  # 3) Resume: nothing reprocessed; shards rewritten; then a rerun changes nothing.
  assert run("audio2photoreal", inp, out) == 0
  manifest, clips = load(out)
  assert manifest["summary"]["processed_this_run"] == 0
  assert manifest["summary"]["reused_from_cache"] == 4 and len(clips) == 4
  shard = os.path.join(out, "train-g0001-00000-of-00001.array_record")
  stamp = os.stat(shard).st_mtime_ns
  assert run("audio2photoreal", inp, out) == 0
  manifest2, _ = load(out)
  assert manifest2["summary"]["shards_reused"] == 2 and os.stat(shard).st_mtime_ns == stamp
  assert manifest2["stats"] == manifest["stats"]
  # 4) A changed input file is redone, the others are not.
  face = os.path.join(inp, "PXB184", "scene02_face_expression.npy")
  np.save(face, fx.face_codes(75, 2) + 1.0)
  assert run("audio2photoreal", inp, out, "--shards", "2") == 0
  manifest3, clips3 = load(out)
  assert manifest3["summary"]["processed_this_run"] == 1
  assert manifest3["splits"]["train"]["shards"][-1] == "train-g0002-00001-of-00002.array_record"
  assert not os.path.exists(shard)  # the stale 1-shard file is removed
  np.testing.assert_allclose(clips3["PXB184_scene02"]["face"],
                             clips["PXB184_scene02"]["face"] + 1.0, atol=1e-5)
  assert manifest3["stats"]["face"]["mean"] != manifest["stats"]["face"]["mean"]


def test_inspect_names_bad_shard_and_record(a2p, tmp_path, capsys):
  import shutil
  _, src = a2p
  out = str(tmp_path / "copy")
  shutil.copytree(src, out)
  with open(os.path.join(out, "manifest.json")) as f:
    manifest = json.load(f)
  manifest["splits"]["val"]["clips"][1]["frames"] += 1
  with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump(manifest, f)
  capsys.readouterr()
  assert inspect_lib.main([out, "--no-progress"]) == 1
  err = capsys.readouterr().err
  assert "val-g0001-00001-of-00002.array_record record 0 (PXB184_scene04)" in err
  shard = os.path.join(out, "train-g0001-00001-of-00002.array_record")
  data = open(shard, "rb").read()
  open(shard, "wb").write(data[: len(data) // 2])
  assert inspect_lib.main([out, "--no-progress"]) == 1
  assert "train-g0001-00001-of-00002.array_record" in capsys.readouterr().err


def test_runs_without_torch_in_a_process_pool(tmp_path):
  fx.make_a2p(str(tmp_path / "in"), scenes=3)
  code = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now fails
from data_prep import prepare, inspect
rc = prepare.main(["--format", "audio2photoreal", "--input", {str(tmp_path / "in")!r},
                   "--output", {str(tmp_path / "out")!r}, "--workers", "2", "--no-progress"])
assert rc == 0, rc
assert inspect.main([{str(tmp_path / "out")!r}, "--no-progress"]) == 0
assert sys.modules["torch"] is None
"""
  # The spawned workers do not inherit sys.modules: a poisoned `torch` package first on the
  # path makes any import of torch in any process fail loudly.
  poison = tmp_path / "poison" / "torch"
  poison.mkdir(parents=True)
  (poison / "__init__.py").write_text("raise ImportError('data_prep must not import torch')\n")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(poison.parent), ROOT]))
  res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env=env)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "clips written: 3" in res.stdout
