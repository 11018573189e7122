"""The lever benchmark's bookkeeping: lever specs, report folders and the cross-split WER gap."""

import argparse

import pytest

from benchmarks import bench_levers


def test_parse_lever():
  assert bench_levers.parse_lever("wide:model.d_model=192, model.hidden_dim=384") == (
      "wide", ("model.d_model=192", "model.hidden_dim=384"))
  for bad in ("wide", "wide:model.d_model", ":a=1", "../x:a=1"):
    with pytest.raises(ValueError, match="NAME:FIELD=VALUE"):
      bench_levers.parse_lever(bad)


def test_data_tag_names_the_corpus():
  assert bench_levers.data_tag("~/.cache/avflow_jax/demo-60min-seed0/shards") == (
      "demo-60min-seed0")
  assert bench_levers.data_tag("/data/my_shards/") == "my_shards"


def test_wer_gap_is_against_the_same_clips_vocoded_recordings():
  report = {"metrics": {"WER": 0.59, "MCD": 3.6},
            "reference": {"vocoded_ground_truth": {"WER": 0.38}}}
  assert bench_levers._metric(report, "WER_gap") == pytest.approx(0.21)  # pylint: disable=protected-access
  assert bench_levers._metric(report, "MCD") == 3.6  # pylint: disable=protected-access
  # Without the reference rows (--no-reference-wer) or the recogniser there is no gap.
  assert bench_levers._metric({"metrics": {"WER": 0.59}}, "WER_gap") is None  # pylint: disable=protected-access
  assert bench_levers._metric({"metrics": {"WER": None}, "reference": report["reference"]},
                              "WER_gap") is None  # pylint: disable=protected-access


def test_a_report_is_reused_only_for_the_corpus_it_scored(tmp_path, monkeypatch):
  out = tmp_path / "run" / "eval" / "levers-seed0-on-x" / "report.json"
  out.parent.mkdir(parents=True)
  out.write_text('{"checkpoint_step": 3000, "data_dir": "/a/x"}')
  args = argparse.Namespace(eval_data_dir="/a/x", steps=3000, no_wer=True, root=str(tmp_path))
  ran = []
  monkeypatch.setattr(bench_levers, "_run", lambda cmd, log: ran.append(cmd))
  assert bench_levers.score(args, "run", str(tmp_path / "run"), 0)["data_dir"] == "/a/x"
  assert not ran
  args.eval_data_dir = "/b/x"  # Same tag, another corpus: scored again, on it.
  bench_levers.score(args, "run", str(tmp_path / "run"), 0)
  assert ran and ran[0][ran[0].index("--data-dir") + 1] == "/b/x"
