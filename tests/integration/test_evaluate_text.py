"""`python -m avflow_jax.evaluate_text`: the token DTW that puts text-driven motion on the
ground-truth time axis, and the whole text -> tokens -> avatar -> F1_lips run on the demo corpus
with tiny random-weight checkpoints."""

import json
import math
import os

import numpy as np
import pytest

from avflow_jax.core import constants as C
from avflow_jax.data import manifest as manifest_lib
from avflow_jax.evaluation import text_alignment
from avflow_jax.evaluation import text_clips
from avflow_jax.evaluation import text_scoring
from avflow_jax.training import random_init

pytestmark = pytest.mark.usefixtures("fast_compile")  # Small models: compile >> run.


def _segment_tokens(labels, durations, rng):
  """Logits whose most likely character is labels[k] for durations[k] frames."""
  rows = []
  for lab, d in zip(labels, durations):
    x = rng.normal(-4.0, 0.3, size=(d, C.TOKEN_DIM))
    x[:, lab] = 8.0
    rows.append(x)
  return np.concatenate(rows).astype(np.float32)


def test_dtw_align_recovers_a_change_of_durations():
  rng = np.random.default_rng(0)
  labels = [0, 5, 0, 9, 12, 0, 3, 7, 0]
  gt_d = rng.integers(3, 12, size=len(labels))
  pred_d = rng.integers(3, 12, size=len(labels))  # the text model's own durations.
  gt = _segment_tokens(labels, gt_d, rng)
  pred = _segment_tokens(labels, pred_d, rng)
  pred_of_gt, gt_of_pred = text_alignment.dtw_align(pred, gt)
  assert pred_of_gt.shape == (gt.shape[0],) and gt_of_pred.shape == (pred.shape[0],)
  assert np.all(np.diff(pred_of_gt) >= 0) and np.all(np.diff(gt_of_pred) >= 0)
  seg_gt = np.repeat(np.arange(len(labels)), gt_d)
  seg_pred = np.repeat(np.arange(len(labels)), pred_d)
  # Every ground-truth frame lands in the same segment of the prediction, and vice versa.
  np.testing.assert_array_equal(seg_pred[pred_of_gt], seg_gt)
  np.testing.assert_array_equal(seg_gt[gt_of_pred], seg_pred)


def test_dtw_align_rejects_wrong_widths():
  with pytest.raises(ValueError, match=r"pred_tokens must be \(T, 29\)"):
    text_alignment.dtw_align(np.zeros((5, 80)), np.zeros((5, C.TOKEN_DIM)))


def test_text_driven_clip_keeps_pauses_and_maps_both_ways():
  rng = np.random.default_rng(1)
  gt = rng.normal(-4.0, 0.3, size=(60, C.TOKEN_DIM)).astype(np.float32)
  gt[10:20, 5] = 8.0
  gt[35:50, 9] = 8.0
  utts = [("first", 10, 20), ("second", 35, 50)]
  preds = {"first": _segment_tokens([5], [14], rng), "second": _segment_tokens([9], [6], rng)}
  silence = np.full((C.TOKEN_DIM,), -1.0, np.float32)
  out = text_alignment.text_driven_clip({"tokens": gt}, utts, lambda text, k: preds[text],
                                        silence)
  tokens, gen_of_gt, gt_of_gen = out["tokens"], out["gen_of_gt"], out["gt_of_gen"]
  # Pauses keep their length (10 + 15 + 10 frames); sentences take the predicted length.
  assert tokens.shape == (10 + 14 + 15 + 6 + 10, C.TOKEN_DIM)
  assert gen_of_gt.shape == (60,) and gt_of_gen.shape == (tokens.shape[0],)
  np.testing.assert_array_equal(tokens[:10], np.broadcast_to(silence, (10, C.TOKEN_DIM)))
  np.testing.assert_array_equal(tokens[10:24], preds["first"])
  np.testing.assert_array_equal(tokens[39:45], preds["second"])
  np.testing.assert_array_equal(gen_of_gt[:10], np.arange(10))
  np.testing.assert_array_equal(gen_of_gt[20:35], 24 + np.arange(15))
  # Each sentence's frames map into that sentence, monotonically, both ways.
  assert np.all((gen_of_gt[10:20] >= 10) & (gen_of_gt[10:20] < 24))
  assert np.all((gen_of_gt[35:50] >= 39) & (gen_of_gt[35:50] < 45))
  assert np.all(np.diff(gen_of_gt) >= 0) and np.all(np.diff(gt_of_gen) >= 0)
  assert [(u["gen_start"], u["gen_end"]) for u in out["utterances"]] == [(10, 24), (39, 45)]


def test_text_driven_clip_without_a_pause_token():
  rng = np.random.default_rng(2)
  gt = _segment_tokens([4, 0, 6], [5, 4, 5], rng)
  pred = _segment_tokens([4, 0, 6], [7, 3, 6], rng)
  # One sentence spanning the whole clip needs no pause frame at all.
  out = text_alignment.text_driven_clip({"tokens": gt}, [("all", 0, 14)], lambda t, k: pred,
                                        None)
  assert out["tokens"].shape == pred.shape and out["gen_of_gt"].shape == (14,)
  with pytest.raises(ValueError, match=r"frames \[0, 2\) lie outside every utterance"):
    text_alignment.text_driven_clip({"tokens": gt}, [("late", 2, 14)], lambda t, k: pred, None)


def test_unspeakable_utterances_are_set_aside():
  keep, drop = text_clips.speakable([("Hello there.", 0, 10), ("♪", 12, 20),
                                      ("No.", 25, 30)])
  assert [u[0] for u in keep] == ["Hello there.", "No."] and drop == [("♪", 12, 20)]


def test_text_key_ignores_case_punctuation_and_spacing():
  from avflow_jax.data import utterances  # pylint: disable=g-import-not-at-top
  assert utterances.text_key("Hello, world.") == utterances.text_key("hello   WORLD") == "hello world"
  assert utterances.text_key("Ｈｅｌｌｏ!") == "hello"  # NFKC folds full-width letters.
  assert utterances.text_key("Hello world") != utterances.text_key("Hello words")


def test_training_split_summary_respects_the_holdout(demo_shards):
  import types  # pylint: disable=g-import-not-at-top

  import ml_collections  # pylint: disable=g-import-not-at-top

  from avflow_jax.data import utterances  # pylint: disable=g-import-not-at-top
  loaded = types.SimpleNamespace(data_dir=demo_shards,
                                 manifest=manifest_lib.load_manifest(demo_shards))
  keys = lambda split: {utterances.text_key(u["text"]) for u in
                        utterances.build_utterance_index(demo_shards, split, add_blank=False)}
  config = ml_collections.ConfigDict({"data": {"holdout_split": ""}})
  silence, seen = text_clips.training_split_summary(loaded, config, "train")
  assert silence.shape == (C.TOKEN_DIM,) and np.isfinite(silence).all()
  assert int(np.argmax(silence)) == 0  # pauses are blank-dominated ASR frames.
  assert seen == keys("train") and seen & keys("val")
  config.data.holdout_split = "val"
  _, seen_held = text_clips.training_split_summary(loaded, config, "train")
  assert seen_held == keys("train") - keys("val") and not seen_held & keys("val")


@pytest.fixture(scope="module")
def runs(demo_shards, tmp_path_factory):
  """A dyadic tiny avatar and a tiny text-to-tokens run (random weights) on the demo shards."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  from tests import fixtures  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("evaluate_text")
  config = tiny.get_config()
  config.data.participant = True
  av = random_init.init_workdir(config, str(root / "av"), demo_shards)
  t2t = fixtures.random_t2t_workdir(str(root / "t2t"), demo_shards)
  return {"av": av, "t2t": t2t, "root": root, "data": demo_shards}


def test_cli_scores_text_driven_lips(runs):
  out = runs["root"] / "report" / "val.json"
  rc = text_scoring.main(["--t2t-workdir", runs["t2t"], "--workdir", runs["av"],
                           "--output", str(out), "--max-clips", "1", "--steps", "1"])
  assert rc == 0
  with open(out) as f:
    report = json.load(f)
  assert report["num_clips"] == 1 and report["num_utterances"] == len(report["utterances"]) > 0
  m = report["metrics"]
  for key in ("F1_lips", "F1_lips_gt_tokens", "F1_lips_speech", "F1_lips_speech_gt_tokens",
              "token_agreement"):
    assert 0.0 <= m[key] <= 1.0, (key, m[key])
  assert m["duration_ratio"] > 0 and math.isfinite(m["duration_ratio"])
  # The tiny run trained on the whole train split: a sentence is seen iff it occurs there.
  from avflow_jax.data import utterances  # pylint: disable=g-import-not-at-top
  train_keys = {utterances.text_key(u["text"]) for u in
                utterances.build_utterance_index(str(runs["data"]), "train")}
  for u in report["utterances"]:
    assert u["seen"] == (utterances.text_key(u["text"]) in train_keys), u["text"]
  assert report["num_unseen"] == sum(not u["seen"] for u in report["utterances"])
  for u in report["utterances"]:
    assert u["text"] and 0 <= u["start"] < u["end"] and u["pred_frames"] > 0
  assert os.path.exists(str(out)[:-5] + ".md")
  assert os.path.getsize(str(out)[:-5] + "_lips.png") > 1000


def test_cli_bad_input_is_one_line(runs, capsys, tmp_path):
  rc = text_scoring.main(["--t2t-workdir", str(tmp_path / "missing"), "--workdir", runs["av"]])
  assert rc == 2 and "--t2t-workdir" in capsys.readouterr().err
  # The avatar workdir is not a text-to-tokens run.
  rc = text_scoring.main(["--t2t-workdir", runs["av"], "--workdir", runs["av"],
                           "--output", str(tmp_path / "r.json")])
  err = capsys.readouterr().err
  assert rc == 2 and "not a 'text_to_tokens' run" in err and "Traceback" not in err
  assert not os.path.exists(tmp_path / "r.json")


def test_text_longer_than_one_call_is_refused(runs, monkeypatch):
  from avflow_jax import api  # pylint: disable=g-import-not-at-top
  from avflow_jax.inference import text_tokens  # pylint: disable=g-import-not-at-top
  t2t = api.load_text_to_tokens(runs["t2t"])
  monkeypatch.setattr(text_tokens, "MAX_TEXT_FRAMES", 4)
  with pytest.raises(api.AvatarError, match="split the text into shorter pieces"):
    api.text_to_tokens("Peter baked a bumpy pie for my mother.", t2t)


def test_sample_text_with_a_dyadic_avatar_needs_no_listener(runs, capsys):
  """The README's text path on the demo avatar: no --participant, a still listener is used."""
  from avflow_jax import sample  # pylint: disable=g-import-not-at-top
  out = runs["root"] / "text_sample"
  rc = sample.main(["--workdir", runs["av"], "--text", "Peter baked a pie.", "--t2t-workdir",
                    runs["t2t"], "--output", str(out), "--steps", "1"])
  captured = capsys.readouterr()
  assert rc == 0, captured.err
  assert "still, average one" in captured.out + captured.err
  with np.load(out / "text.npz") as z:
    assert z["face"].shape[0] == z["tokens"].shape[0] > 0


def test_paper_table_adds_the_text_driven_rows_and_reuses_them(runs):
  """`paper_table --t2t-workdir`: the text-driven row of each run is its evaluate_text report
  (scored in the same job pool as the token-driven rows), reused on a rerun."""
  from avflow_jax.evaluation import paper_table  # pylint: disable=g-import-not-at-top
  from avflow_jax.evaluation import scoring  # pylint: disable=g-import-not-at-top
  out = runs["root"] / "table"
  argv = ["--runs", f"av={runs['av']}", "--output", str(out), "--t2t-workdir", runs["t2t"],
          "--max-clips", "1", "--max-seconds", "3", "--seeds", "0", "--steps", "1",
          "--no-wer", "--no-timing", "--jobs", "1"]

  def build():
    logs = []
    table = paper_table.build_table(paper_table.make_parser().parse_args(argv),
                                    log=logs.append, evaluate=scoring.evaluate,
                                    evaluate_text=text_scoring.evaluate_text)
    return table, logs

  table, _ = build()
  with open(out / "av" / "seed0" / "text_report.json") as f:
    report = json.load(f)
  (row,) = table["text_rows"]
  assert row["name"] == "av"
  assert row["metrics"]["F1_lips"]["values"] == [report["metrics"]["F1_lips"]]
  assert report["paper_table_protocol"]["t2t_step"] == report["t2t_step"]
  assert "| av |" in (out / "table.md").read_text()
  again, logs = build()
  assert sum("reusing" in line for line in logs) == 2  # The token- and the text-driven report.
  assert again["text_rows"] == table["text_rows"]
