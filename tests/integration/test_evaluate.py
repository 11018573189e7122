"""`python -m avflow_jax.evaluate`: a tiny trained run scored end to end, the oracle's known
answers (F1 = 1, FDe = 0), the metric bookkeeping on hand-made clips, and bad-input exits."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from avflow_jax.core import constants as C
from avflow_jax.core import face_rig as face_rig_lib
from avflow_jax.data import clips
from avflow_jax.evaluation import av_metrics
from avflow_jax.evaluation import metrics
from avflow_jax.evaluation import scoring
from avflow_jax.training import random_init
from data_prep import synthetic

pytestmark = pytest.mark.usefixtures("fast_compile")  # Small models: compile >> run.

N_VAL = 3


def _shards_with_rig(data: str, out: str) -> str:
  """A shard directory whose manifest names a demo face rig (FaceRig.create(0))."""
  return synthetic.shards_with_face_rig(data, out, seed=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A configs/tiny.py avatar (random weights, the layout loop.py writes) on synthetic shards,
  plus a copy of the shards with the demo face rig.

  Training it for a few steps would be the same to the evaluator but costs over a minute of
  compilation on 2 cores; `test_trained_run` (slow) does that round trip.
  """
  from configs import tiny  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("evaluate")
  data = synthetic.write_synthetic_shards(str(root / "shards"), n_train=8, n_val=N_VAL)
  rig_data = _shards_with_rig(data, str(root / "shards_rig"))
  workdir = random_init.init_workdir(tiny.get_config(), str(root / "run"), data)
  return {"workdir": workdir, "data": data, "rig_data": rig_data, "root": root}


def _run_cli(*argv) -> int:
  return scoring.main([str(a) for a in argv])


def _load(path):
  with open(path) as f:
    return json.load(f)


def _check_report(report, num_clips, step=0):
  assert set(report["metrics"]) == set(scoring.METRIC_KEYS)
  for k, v in report["metrics"].items():
    if v is None:
      assert report["unavailable"].get(k), f"{k} is null without a reason"
    else:
      assert math.isfinite(v), (k, v)
      assert k not in report["unavailable"]
  assert report["num_clips"] == num_clips and len(report["clips"]) == num_clips
  assert report["checkpoint_step"] == step
  assert set(report["reference"]["ground_truth"]) == set(scoring.REFERENCE_KEYS)
  assert set(report["reference"]["vocoded_ground_truth"]) == set(av_metrics.VOCODED_KEYS)


def test_end_to_end_without_face_rig(run, tmp_path):
  out = tmp_path / "ev" / "report.json"
  assert _run_cli("--workdir", run["workdir"], "--output", out, "--max-seconds", 1.0) == 0
  report = _load(out)
  _check_report(report, N_VAL)
  # No face decoder in this data: F1 is null and says why; everything else is a number.
  for k in ("F1_lips", "F1_smiles"):
    assert report["metrics"][k] is None
    assert "face_decoder" in report["unavailable"][k]
  for k in ("FDe", "Div_h", "Div_e", "BC_h", "BC_e", "MCD", "Jitter_face", "Jitter_head"):
    assert report["metrics"][k] is not None, k
  assert report["metrics"]["FDe"] > 0 and report["metrics"]["MCD"] > 0
  # These clips have no transcript: WER says so (or that the recogniser is not installed).
  assert report["metrics"]["WER"] is None
  assert "utterance" in report["unavailable"]["WER"] or "[wer]" in report["unavailable"]["WER"]
  # --max-seconds 1: every clip cut to the first int(86.13) frames.
  assert [c["frames"] for c in report["clips"]] == [86] * N_VAL
  assert report["seconds_evaluated"] == pytest.approx(N_VAL * 86 / C.FRAME_RATE)
  assert report["config"]["vocoder"] == "griffin_lim" and not report["config"]["oracle"]
  md = (tmp_path / "ev" / "report.md").read_text()
  assert "| FDe |" in md and "F1_lips: the data has no face decoder" in md
  for c in report["clips"]:
    png = tmp_path / "ev" / c["plot"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"]({c['plot']})" in md
  assert not [n for n in os.listdir(tmp_path / "ev") if n.startswith(".")]  # no temp files


def test_oracle_with_face_rig_gives_known_answers(run, tmp_path):
  common = ("--workdir", run["workdir"], "--data-dir", run["rig_data"], "--max-seconds", 1.0)
  assert _run_cli(*common, "--oracle", "--output", tmp_path / "oracle.json") == 0
  oracle = _load(tmp_path / "oracle.json")
  _check_report(oracle, N_VAL)
  assert oracle["config"]["oracle"] and oracle["config"]["face_decoder"] == "face_rig.npz"
  # The events the F1 scores are real (neither none nor every frame), so F1 = 1 means something.
  for key in ("lips", "smiles"):
    n = sum(c[f"gt_{key}_frames"] for c in oracle["clips"])
    total = sum(c["observed_face_frames"] for c in oracle["clips"])
    assert 0 < n < total, (key, n, total)
  assert oracle["metrics"]["F1_lips"] == 1.0
  assert oracle["metrics"]["F1_smiles"] == 1.0
  assert abs(oracle["metrics"]["FDe"]) < 1e-2
  # The "generated" motion is the ground truth: same diversity as the reference row.
  for k in ("Div_h", "Div_e"):
    assert oracle["metrics"][k] == pytest.approx(oracle["reference"]["ground_truth"][k],
                                                 rel=1e-6)
  assert oracle["metrics"]["Jitter_face"] == pytest.approx(1.0)
  assert oracle["metrics"]["Jitter_head"] == pytest.approx(1.0)

  # Sampled with the rig: F1 scores exist, and the random model is far from the oracle.
  assert _run_cli(*common, "--max-clips", 1, "--no-plots", "--output",
                  tmp_path / "sample.json") == 0
  sample = _load(tmp_path / "sample.json")
  _check_report(sample, 1)
  assert 0.0 <= sample["metrics"]["F1_lips"] <= 1.0
  assert 0.0 <= sample["metrics"]["F1_smiles"] <= 1.0
  assert sample["metrics"]["FDe"] > 100 * max(abs(oracle["metrics"]["FDe"]), 1e-3)
  assert sample["metrics"]["Jitter_face"] > 1.5  # an untrained model's codes are noise
  assert not list(tmp_path.glob("sample*.png"))  # --no-plots


def test_wer_of_speech_beside_recordings_and_vocoded_ground_truth(tmp_path):
  """Real speech (eSpeak) with transcripts: the recogniser's three rows and their relations."""
  pytest.importorskip("pocketsphinx")
  from configs import tiny  # pylint: disable=g-import-not-at-top
  sentences = ("Please remember to bring your umbrella tomorrow.",
               "The moon rose over the quiet meadow.")
  data = synthetic.write_synthetic_shards(str(tmp_path / "shards"), n_train=4, n_val=2,
                                         val_speech=sentences)
  workdir = random_init.init_workdir(tiny.get_config(), str(tmp_path / "run"), data)
  common = ("--workdir", workdir, "--max-seconds", 0, "--no-plots")
  assert _run_cli(*common, "--oracle", "--output", tmp_path / "oracle.json") == 0
  oracle = _load(tmp_path / "oracle.json")
  _check_report(oracle, 2)
  gt, vocoded = (oracle["reference"][k] for k in ("ground_truth", "vocoded_ground_truth"))
  assert gt["WER"] is not None and gt["WER"] <= 0.5  # eSpeak's own recordings
  # The oracle's "generated" mel is the ground truth's: the same audio as the vocoded row.
  assert oracle["metrics"]["WER"] == vocoded["WER"]
  assert vocoded["MCD"] == pytest.approx(oracle["metrics"]["MCD"])
  assert [c["utterances"] for c in oracle["clips"]] == [1, 1]
  assert oracle["clips"][0]["transcripts"][0]["text"] == sentences[0]
  assert oracle["config"]["recogniser"].startswith("pocketsphinx en-us")

  assert _run_cli(*common, "--max-clips", 1, "--output", tmp_path / "sample.json") == 0
  sample = _load(tmp_path / "sample.json")
  assert sample["metrics"]["WER"] >= 0.8  # random weights speak no words
  assert _run_cli(*common, "--max-clips", 1, "--no-wer", "--output", tmp_path / "no.json") == 0
  skipped = _load(tmp_path / "no.json")
  assert skipped["metrics"]["WER"] is None and "--no-wer" in skipped["unavailable"]["WER"]
  assert skipped["reference"]["vocoded_ground_truth"]["WER"] is None


def test_dyadic_run_is_conditioned_on_each_clips_participant(tmp_path, monkeypatch):
  from avflow_jax import api  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  data = synthetic.write_synthetic_shards(str(tmp_path / "shards"), n_train=4, n_val=2,
                                         participant=True)
  config = tiny.get_config()
  config.data.participant = True
  workdir = random_init.init_workdir(config, str(tmp_path / "run"), data)
  seen = []
  sample_motion = api.Avatar.sample_motion

  def spy(self, tokens, **kw):
    seen.append((tokens, kw["participant"], kw["seed"]))
    return sample_motion(self, tokens, **kw)

  monkeypatch.setattr(api.Avatar, "sample_motion", spy)
  assert _run_cli("--workdir", workdir, "--max-seconds", 0.5, "--no-plots", "--seed", 7) == 0
  shards, entries = clips.split_entries(data, _load(os.path.join(data, "manifest.json")),
                                           "val")
  want = [r for _, r in clips.iter_split_records(shards, entries)]
  assert [s for _, _, s in seen] == [7, 8]  # clip i: seed + i
  for (tok, part, _), rec in zip(seen, want):
    np.testing.assert_array_equal(tok, rec["tokens"][:43])
    np.testing.assert_array_equal(part, rec["participant"][:43])
  report = _load(os.path.join(workdir, "eval", "val-step0-seed7", "report.json"))
  _check_report(report, 2)
  assert report["config"]["participant"]


def _clip(name, rig, lips, smiles, rng, t=200, audio=True):
  """A clip whose GT codes decode to the given lip_closure / smile channel values."""
  ch = np.full((t, face_rig_lib.NUM_CHANNELS), 0.2, np.float32)
  ch[:, face_rig_lib.CHANNELS.index("lip_closure")] = lips
  ch[:, face_rig_lib.CHANNELS.index("smile")] = smiles
  face = rig.encode(ch, rng.normal(size=(t, face_rig_lib.NUISANCE_DIM)) * 0.3)
  head = rng.normal(size=(t, 7)).astype(np.float32) * 0.1
  sound = (np.sin(np.arange(t * C.HOP_LENGTH) * 0.05) * (np.arange(t * C.HOP_LENGTH) % 5000
                                                          < 2000)).astype(np.float32) * 0.5
  return dict(name=name, gt_mel=np.zeros((t, 80), np.float32), gt_face=face, gt_head=head,
              face_mask=np.ones(t, bool), gt_audio=sound if audio else None,
              gen_mel=np.zeros((t, 80), np.float32), gen_audio=sound)


def test_accumulator_known_answers():
  rig = face_rig_lib.FaceRig.create(3)
  rng = np.random.default_rng(0)
  t = 200
  gt_lips = (np.arange(t) % 20 < 5).astype(np.float32)  # 50 closure frames
  gen_lips = gt_lips.copy()
  gen_lips[:10] = 1 - gen_lips[:10]  # frames 0-4: 5 misses (FN); frames 5-9: 5 false alarms
  acc = av_metrics.MetricAccumulator(rig)
  a = _clip("a", rig, gt_lips, 0.0, rng)
  b = _clip("b", rig, gen_lips, 0.0, rng)
  acc.add(av_metrics.ClipStreams(**a, gen_face=b["gt_face"], gen_head=a["gt_head"]))
  c = _clip("c", rig, gt_lips, 1.0, rng, audio=False)
  c["face_mask"][:100] = False  # Only the observed half counts for F1 and FDe.
  acc.add(av_metrics.ClipStreams(**c, gen_face=c["gt_face"], gen_head=c["gt_head"]))
  out, why, ref = acc.summary()
  # Clip a: TP 45, FP 5, FN 5 -> F1 = 90 / 100; clip c (100 observed frames) is perfect: TP 25.
  assert acc.per_clip[0]["F1_lips"] == pytest.approx(0.9)
  assert acc.per_clip[1]["F1_lips"] == 1.0
  assert out["F1_lips"] == pytest.approx(2 * 70 / (2 * 70 + 5 + 5))
  # Smiles: none in clip a (both sides), all 100 observed frames of clip c.
  assert out["F1_smiles"] == 1.0 and acc.per_clip[1]["gt_smiles_frames"] == 100
  # MCD of identical audio is 0; clip c has no GT audio so its MCD (and GT BC) are null.
  assert acc.per_clip[0]["MCD"] == pytest.approx(0.0, abs=1e-6)
  assert acc.per_clip[1]["MCD"] is None and acc.per_clip[1]["gt_BC_h"] is None
  assert out["MCD"] == pytest.approx(0.0, abs=1e-6)
  # Same audio and head motion on both sides of clip a: the BC_h scores agree.
  assert acc.per_clip[0]["BC_h"] == acc.per_clip[0]["gt_BC_h"] is not None
  gen_head = np.concatenate([a["gt_head"], c["gt_head"]])
  assert out["Div_h"] == pytest.approx(metrics.diversity(gen_head))
  assert ref["ground_truth"]["Div_h"] == pytest.approx(out["Div_h"])
  assert out["FDe"] > 0
  # Clip a's generated head is its ground truth (jitter 1); its face is clip b's codes.
  assert acc.per_clip[0]["Jitter_head"] == pytest.approx(1.0)
  assert acc.per_clip[1]["Jitter_face"] == pytest.approx(1.0)
  assert set(why) == {"WER"} and "not requested" in why["WER"]


def test_chosen_checkpoint_and_sampler_settings_name_the_default_report(run):
  """A learning curve scores older checkpoints; several temperatures of one checkpoint must not
  overwrite each other's report."""
  argv = ("--workdir", run["workdir"], "--max-clips", 1, "--max-seconds", 0.5, "--no-plots")
  assert _run_cli(*argv, "--checkpoint", 0, "--temperature", 0.5, "--seed", 3) == 0
  report = _load(os.path.join(run["workdir"], "eval", "val-step0-T0.5-seed3", "report.json"))
  assert report["checkpoint_step"] == 0 and report["num_clips"] == 1
  assert report["config"]["temperature"] == 0.5


def test_the_runs_sample_temperature_is_the_default(run, tmp_path):
  """A run whose config samples at 0.5 is scored at 0.5 without a flag, and its report folder
  names only a temperature other than the run's."""
  half = tmp_path / "half"
  shutil.copytree(run["workdir"], half)
  config = _load(half / "config.json")
  config["sample"]["temperature"] = 0.5
  (half / "config.json").write_text(json.dumps(config))
  argv = ("--workdir", half, "--max-clips", 1, "--max-seconds", 0.5, "--no-plots", "--no-wer")
  assert _run_cli(*argv) == 0
  assert _load(half / "eval" / "val-step0" / "report.json")["config"]["temperature"] == 0.5
  assert _run_cli(*argv, "--temperature", 1) == 0
  assert _load(half / "eval" / "val-step0-T1" / "report.json")["config"]["temperature"] == 1.0


def test_bad_input_exits_2_with_one_line(run, tmp_path, capsys):
  cases = [
      (("--workdir", tmp_path / "nope"), "no such directory"),
      (("--workdir", run["workdir"], "--split", "test"), "'test'"),
      (("--workdir", run["workdir"], "--max-clips", 0), "--max-clips"),
      (("--workdir", run["workdir"], "--vocoder-weights", tmp_path / "v.safetensors"),
       "file missing"),
  ]
  empty = tmp_path / "empty_run"
  empty.mkdir()
  shutil.copy(os.path.join(run["workdir"], "config.json"), empty / "config.json")
  cases.append((("--workdir", empty), "checkpoints"))
  cases.append((("--workdir", run["workdir"], "--checkpoint", 7),
                "no checkpoint at step 7 (committed steps: 0)"))
  for argv, needle in cases:
    capsys.readouterr()
    assert _run_cli(*argv, "--output", tmp_path / "r" / "report.json") == 2, argv
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and "\n" not in err, (argv, err)
  assert not (tmp_path / "r" / "report.json").exists()


@pytest.mark.slow
def test_trained_run(tmp_path):
  """The real thing: configs/tiny.py trained for 6 steps by loop.py, evaluated with the rig."""
  from avflow_jax.training import loop  # pylint: disable=g-import-not-at-top
  from configs import tiny  # pylint: disable=g-import-not-at-top
  data = synthetic.write_synthetic_shards(str(tmp_path / "shards"), n_train=8, n_val=N_VAL)
  rig_data = _shards_with_rig(data, str(tmp_path / "shards_rig"))
  config = tiny.get_config()
  config.data.dir = rig_data
  config.head_vae.steps = 5
  config.num_steps = 6
  config.ckpt_every = 6
  config.compilation_cache_dir = ""
  workdir = str(tmp_path / "run")
  loop.train_and_evaluate(config, workdir)
  assert _run_cli("--workdir", workdir, "--max-clips", 2, "--max-seconds", 1.0) == 0
  out = os.path.join(workdir, "eval", "val-step6", "report.json")  # The default output.
  report = _load(out)
  _check_report(report, 2, step=6)
  # Everything but WER (these synthetic clips have no transcript; see test_wer_...).
  assert set(report["unavailable"]) <= {"WER"}, report["unavailable"]
  assert os.path.exists(os.path.join(workdir, "eval", "val-step6", "report_val000.png"))
