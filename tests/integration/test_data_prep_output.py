"""`python -m data_prep` and its output directory: full disks, kills, locks, bad arguments."""

import errno
import glob
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from avflow_jax.core import files
from avflow_jax.core import locks
from avflow_jax.data import crops
from avflow_jax.data import manifest as manifest_lib
from data_prep import cache as cache_lib
from data_prep import inspect as inspect_lib
from data_prep import prepare
from data_prep import shards as shards_lib
from data_prep import synthetic as fx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(inp, out, *extra, fmt="audio2photoreal"):
  return prepare.main(["--format", fmt, "--input", str(inp), "--output", str(out),
                       "--workers", "1", "--no-progress", *extra])


def snapshot(out):
  """{file: sha1} of manifest.json and every shard it names."""
  with open(os.path.join(out, "manifest.json"), "rb") as f:
    blob = f.read()
  names = ["manifest.json"] + [s for info in json.loads(blob)["splits"].values()
                               for s in info["shards"]]
  return {n: hashlib.sha1(open(os.path.join(out, n), "rb").read()).hexdigest() for n in names}


def leftovers(out):
  """Temporaries anywhere under out, and shard files the manifest does not name."""
  temps = [p for p in glob.glob(os.path.join(out, "**", ".*"), recursive=True)
           if files.PARTIAL in p]
  named = set()
  if os.path.exists(os.path.join(out, "manifest.json")):
    named = set(snapshot(out))
  shards = sorted(n for n in os.listdir(out)
                  if shards_lib.SHARD_PATTERN.match(n) and n not in named)
  return temps + shards


def one_error_line(err):
  lines = [l for l in err.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith("error: "), err
  return lines[0]


@pytest.fixture
def prepared(tmp_path):
  """A prepared dataset (one shard per split) and its input, which then changes."""
  inp, out = str(tmp_path / "in"), str(tmp_path / "out")
  fx.make_a2p(inp)
  assert run(inp, out, "--shards", "1") == 0
  before = snapshot(out)
  for scene in (2, 4):  # A train and a val clip: the rerun rewrites both shards.
    np.save(os.path.join(inp, "PXB184", f"scene{scene:02d}_face_expression.npy"),
            fx.face_codes(75, scene) + 1.0)
  return inp, out, before


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_output_write_error_in_the_cache_stops_the_run(tmp_path, monkeypatch, capsys, code):
  inp, out = str(tmp_path / "in"), str(tmp_path / "out")
  fx.make_a2p(inp)
  real_put = cache_lib.ClipCache.put
  calls = {"n": 0}

  def failing_put(self, key, record, meta):
    calls["n"] += 1
    if calls["n"] < 2:
      return real_put(self, key, record, meta)
    with files.atomic_path(os.path.join(self.directory, key + ".rec")) as tmp:
      with open(tmp, "wb") as f:
        f.write(record[:100])  # Half a file, then the disk says no.
      raise OSError(code, os.strerror(code))

  monkeypatch.setattr(cache_lib.ClipCache, "put", failing_put)
  capsys.readouterr()
  assert run(inp, out) == 2
  line = one_error_line(capsys.readouterr().err)
  assert f"{os.path.join(out, '.cache')}/PXB184_scene02." in line
  assert os.strerror(code) in line and errno.errorcode[code] in line
  assert calls["n"] == 2  # Stopped at the failing clip, not skipped past it.
  assert not os.path.exists(os.path.join(out, "manifest.json"))
  assert not leftovers(out)


def test_full_disk_while_writing_a_shard_keeps_the_old_dataset(prepared, monkeypatch, capsys):
  inp, out, before = prepared
  from array_record.python import array_record_module
  real_writer = array_record_module.ArrayRecordWriter
  opened = []

  class FullDisk:
    """ArrayRecord's writer as it fails on a full disk: the error comes at close."""

    def __init__(self, path, options):
      opened.append(path)
      self._w = real_writer(path, options)

    def write(self, data):
      self._w.write(data)

    def close(self):
      self._w.close()
      if len(opened) == 2:
        raise RuntimeError(f"write() failed: No space left on device; writing {opened[-1]}")

  monkeypatch.setattr(array_record_module, "ArrayRecordWriter", FullDisk)
  capsys.readouterr()
  assert run(inp, out, "--shards", "1") == 2
  line = one_error_line(capsys.readouterr().err)
  assert "cannot write " + os.path.join(out, "val-g0002-00000-of-00001.array_record") in line
  assert "No space left on device" in line
  assert snapshot(out) == before  # The old manifest and its shards, untouched.
  assert not leftovers(out)  # The new generation's finished train shard is gone too.


def test_full_disk_while_writing_the_manifest(prepared, monkeypatch, capsys):
  inp, out, before = prepared
  real = files.write_atomic

  def write_atomic(path, data, fsync=False):
    if os.path.basename(path) == "manifest.json":
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return real(path, data, fsync)

  monkeypatch.setattr(files, "write_atomic", write_atomic)
  capsys.readouterr()
  assert run(inp, out, "--shards", "1") == 2
  line = one_error_line(capsys.readouterr().err)
  assert os.path.join(out, "manifest.json") in line and "[ENOSPC]" in line
  assert snapshot(out) == before and not leftovers(out)


def _prepare_script(inp, out, kill_at_shard):
  """data_prep in a subprocess that SIGKILLs itself inside shard `kill_at_shard`'s write."""
  return textwrap.dedent(f"""
      import os, signal, sys
      from data_prep import prepare, shards
      real, calls = shards.write_shard, []
      def write_shard(path, records, on_record=lambda: None):
        calls.append(path)
        def killing():
          for i, record in enumerate(records):
            if len(calls) == {kill_at_shard} and i == 1:
              os.kill(os.getpid(), signal.SIGKILL)  # No cleanup runs, as with a real kill.
            yield record
        return real(path, killing(), on_record)
      shards.write_shard = write_shard
      sys.exit(prepare.main(["--format", "audio2photoreal", "--input", {inp!r}, "--output",
                             {out!r}, "--workers", "1", "--no-progress", "--shards", "1"]))
      """)


def test_sigkill_mid_rewrite_keeps_a_consistent_dataset(prepared, capsys):
  inp, out, before = prepared
  env = dict(os.environ, PYTHONPATH=ROOT)
  res = subprocess.run([sys.executable, "-c", _prepare_script(inp, out, 2)], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=300)
  assert res.returncode == -9, res.stderr[-3000:]
  # The old manifest still names exactly the old files, byte for byte...
  assert snapshot(out) == before
  # ...while the new train shard was written beside them, under a name no manifest holds,
  # and the val shard's temporary was left half written.
  left = leftovers(out)
  assert left[-1] == "train-g0002-00000-of-00001.array_record" and len(left) == 2
  assert os.path.basename(left[0]).startswith(".val-g0002-00000-of-00001.array_record.")
  capsys.readouterr()
  assert inspect_lib.main([out, "--no-progress"]) == 0
  manifest = manifest_lib.load_manifest(out)
  batch = next(iter(crops.make_crop_dataset(
      out, manifest, "train", global_batch_size=2, crop=16,
      streams=("mel", "tokens", "face", "head"), seed=0)))
  assert batch["face"].shape == (2, 16, 256)
  # The next run takes the dead run's lock over, finishes, and deletes the leftovers.
  capsys.readouterr()
  assert run(inp, out, "--shards", "1") == 0
  assert "taking over the stale lock" in capsys.readouterr().err
  assert sorted(snapshot(out)) == ["manifest.json", "train-g0002-00000-of-00001.array_record",
                                   "val-g0002-00000-of-00001.array_record"]
  assert not leftovers(out) and not glob.glob(os.path.join(out, "*-g0001-*"))
  assert json.load(open(os.path.join(out, "manifest.json")))["prep"]["generation"] == 2


def test_a_second_run_on_the_same_output_is_refused(tmp_path, capsys):
  inp, out = str(tmp_path / "in"), str(tmp_path / "out")
  fx.make_a2p(inp, scenes=3)
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys\nfrom avflow_jax.core import locks\n"
       f"with locks.hold({out!r}, '--output'):\n  print('held', flush=True)\n"
       "  sys.stdin.read()\n"],
      cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdin=subprocess.PIPE,
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    capsys.readouterr()
    assert run(inp, out) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"--output {out} is in use by pid {holder.pid}" in line
    assert sorted(os.listdir(out)) == [locks.LOCK_NAME]  # Nothing was touched.
  finally:
    holder.stdin.close()
    holder.wait(timeout=60)
  assert run(inp, out) == 0  # Free again.


def test_remove_partials_spares_a_live_writer(tmp_path):
  """Another run's (or worker's) temporary survives this run's cleanup of dead ones."""
  live = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                          stdin=subprocess.PIPE)
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  try:
    d = str(tmp_path)
    mine = os.path.join(d, f".a.rec.{live.pid}.abcd1234{files.PARTIAL}.rec")
    gone = os.path.join(d, f".b.rec.{dead.pid}.abcd1234{files.PARTIAL}.rec")
    old = os.path.join(d, f".c.rec.abcd1234{files.PARTIAL}.rec")  # Before pids: deleted.
    for p in (mine, gone, old):
      open(p, "w").close()
    assert files.remove_partials(d) == 2
    assert os.listdir(d) == [os.path.basename(mine)]
  finally:
    live.stdin.close()
    live.wait(timeout=60)
  # The temporaries atomic_path makes carry this process's pid.
  with files.atomic_path(os.path.join(d, "x.json")) as tmp:
    assert files.writer_pid(tmp) == os.getpid()
    assert files.remove_partials(d) == 1 and os.path.exists(tmp)  # `mine` is dead now.


def test_output_that_is_a_file_is_one_line(tmp_path, capsys):
  fx.make_a2p(str(tmp_path / "in"), scenes=3)
  target = tmp_path / "out.txt"
  target.write_text("not a directory")
  capsys.readouterr()
  assert run(tmp_path / "in", target) == 2
  line = one_error_line(capsys.readouterr().err)
  assert f"--output {target} is a file, not a directory" in line
  assert run(tmp_path / "in", target / "sub") == 2
  assert f"is under {target}, which is a file" in one_error_line(capsys.readouterr().err)
  assert target.read_text() == "not a directory"


def test_a2p_audio_at_another_rate_is_skipped(tmp_path, capsys):
  inp = str(tmp_path / "in")
  fx.make_a2p(inp, scenes=4)
  wav = os.path.join(inp, "PXB184", "scene01_audio.wav")
  fx.write_wav(wav, fx.tone(2.5, 8000, 1, 2), 8000)
  assert run(inp, tmp_path / "out") == 0
  manifest = manifest_lib.load_manifest(str(tmp_path / "out"))
  assert manifest["skipped"] == [{"clip": "PXB184_scene01",
                                  "reason": f"{wav}: sample rate 8000 Hz, expected 48000"}]
  assert manifest["summary"]["skipped_by_reason"] == {"wrong sample rate": 1}


@pytest.mark.parametrize("layout, shown", [({"fps": 0}, "0"), ({"fps": -25}, "-25"),
                                           ({"fps": float("nan")}, "nan"),
                                           ({"fps": "thirty"}, "'thirty'"),
                                           ({"head_dim": 5}, "5")])
def test_bad_layout_json_is_one_line(tmp_path, capsys, layout, shown):
  inp = str(tmp_path / "in")
  fx.make_generic(inp)
  path = os.path.join(inp, "layout.json")
  with open(path, "w") as f:
    json.dump(layout, f)  # NaN is written as the NaN literal, which json.load accepts.
  capsys.readouterr()
  assert run(inp, tmp_path / "out", fmt="generic") == 1
  field = next(iter(layout))
  line = one_error_line(capsys.readouterr().err)
  assert line.startswith(f"error: {path}: field '{field}' is {shown}, expected"), line


def test_a_dataset_of_unprefixed_shards_is_reused_then_replaced(tmp_path):
  """Shards named before generations: kept while unchanged, replaced once a clip changes."""
  inp, out = str(tmp_path / "in"), str(tmp_path / "out")
  fx.make_a2p(inp)
  assert run(inp, out, "--shards", "1") == 0
  path = os.path.join(out, "manifest.json")
  manifest = json.load(open(path))
  keys = manifest["prep"].pop("shard_keys")
  del manifest["prep"]["generation"]
  manifest["prep"]["shard_keys"] = {}
  for info in manifest["splits"].values():
    for i, name in enumerate(info["shards"]):
      legacy = name.replace("-g0001-", "-")
      os.rename(os.path.join(out, name), os.path.join(out, legacy))
      info["shards"][i] = legacy
      manifest["prep"]["shard_keys"][legacy] = keys[name]
  json.dump(manifest, open(path, "w"))
  assert run(inp, out, "--shards", "1") == 0
  again = json.load(open(path))
  assert again["summary"]["shards_reused"] == 2 and again["prep"]["generation"] == 0
  assert again["splits"]["train"]["shards"] == ["train-00000-of-00001.array_record"]
  np.save(os.path.join(inp, "PXB184", "scene01_face_expression.npy"),
          fx.face_codes(75, 1) + 1.0)
  assert run(inp, out, "--shards", "1") == 0
  assert sorted(snapshot(out)) == ["manifest.json", "train-g0001-00000-of-00001.array_record",
                                   "val-00000-of-00001.array_record"]  # val is unchanged.
  assert not leftovers(out)
