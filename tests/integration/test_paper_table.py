"""`python -m avflow_jax.paper_table`: several runs scored with one protocol into the paper's
Table 1 (seeds, reference rows, parameters, timing, reuse of finished evaluations), and its
one-line errors."""

import json
import os

import jax
import numpy as np
import pytest

from avflow_jax import paper_table as paper_table_cmd
from avflow_jax.core import run_dir
from avflow_jax.evaluation import paper_table
from avflow_jax.evaluation import scoring
from avflow_jax.evaluation import text_scoring
from avflow_jax.training import random_init
from data_prep import synthetic

pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Two random-weight tiny runs, AV-Flow and the cascaded ablation, on shards with a rig."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp("paper_table")
  data = synthetic.write_synthetic_shards(str(root / "shards"), n_train=4, n_val=2)
  data = synthetic.shards_with_face_rig(data, str(root / "shards_rig"), seed=0)
  out = {}
  for variant in ("av_flow", "cascaded"):
    config = tiny.get_config()
    config.model.variant = variant
    out[variant] = random_init.init_workdir(config, str(root / variant), data)
  return out, root


def _main(runs, out, *extra):
  argv = ["--runs"] + [f"{k}={v}" for k, v in runs.items()] + [
      "--output", str(out), "--max-seconds", "1.5", "--no-wer", "--timed-seconds", "1",
      "--jobs", "1", "--max-clips", "1", *extra]
  logs = []
  table = paper_table.build_table(paper_table.make_parser().parse_args(argv), log=logs.append,
                                  evaluate=scoring.evaluate,
                                  evaluate_text=text_scoring.evaluate_text)
  return table, logs


def test_table_scores_every_run_on_the_same_clips_and_seeds(runs):
  workdirs, root = runs
  out = root / "table"
  table, _ = _main(workdirs, out)
  names = [r["name"] for r in table["rows"]]
  assert names == ["ground truth", "vocoded ground truth", "av_flow", "cascaded"]
  rows = {r["name"]: r for r in table["rows"]}
  for name, workdir in workdirs.items():
    row = rows[name]
    _, params = run_dir.load_params(workdir, "ema")
    assert row["params"] == sum(np.size(x) for x in jax.tree.leaves(params))
    assert row["variant"] == name
    reports = [json.load(open(out / name / f"seed{s}" / "report.json")) for s in (0, 1)]
    assert [r["config"]["seed"] for r in reports] == [0, paper_table.SEED_STRIDE]
    for k in ("MCD", "FDe", "F1_lips", "Jitter_face"):
      vals = [r["metrics"][k] for r in reports]
      assert row["metrics"][k]["values"] == vals
      assert row["metrics"][k]["mean"] == pytest.approx(np.mean(vals))
      assert row["metrics"][k]["std"] == pytest.approx(np.std(vals))
    assert reports[0]["metrics"]["MCD"] != reports[1]["metrics"]["MCD"]  # Other noise.
    assert row["timing"]["sample_s"] > 0 and row["timing"]["vocoder_s"] > 0
  assert set(rows["cascaded"]["timing"]["stages_s"]) == {"audio", "visual"}
  assert "stages_s" not in rows["av_flow"]["timing"]
  assert rows["cascaded"]["params"] != rows["av_flow"]["params"]
  # The same clips: the two runs' ground-truth-only values agree.
  a, c = (json.load(open(out / n / "seed0" / "report.json")) for n in workdirs)
  assert [x["name"] for x in a["clips"]] == [x["name"] for x in c["clips"]]
  assert rows["vocoded ground truth"]["metrics"]["MCD"]["mean"] is None  # --no-wer: no floor.
  md = (out / "table.md").read_text()
  assert "| cascaded |" in md and " ± " in md and table["device"] in md
  assert json.load(open(out / "table.json"))["rows"][2]["name"] == "av_flow"


def test_rerun_reuses_finished_evaluations(runs):
  workdirs, root = runs
  out = root / "rerun"
  first, _ = _main({"av_flow": workdirs["av_flow"]}, out, "--seeds", "0", "--no-timing")
  again, logs = _main({"av_flow": workdirs["av_flow"]}, out, "--seeds", "0", "--no-timing")
  assert any("reusing" in line for line in logs)
  assert again["rows"][2]["metrics"] == first["rows"][2]["metrics"]
  # Another protocol (here fewer Euler steps) is measured anew, not reused; two jobs at once
  # (each in its own process) give the same numbers as one.
  two, logs = _main({"av_flow": workdirs["av_flow"]}, out, "--seeds", "0,1", "--no-timing",
                    "--steps", "2", "--jobs", "2", "--max-clips", "1")
  assert not any("reusing" in line for line in logs)
  one, _ = _main({"av_flow": workdirs["av_flow"]}, root / "rerun_one", "--seeds", "0,1",
                 "--no-timing", "--steps", "2", "--max-clips", "1")
  for k, stat in one["rows"][2]["metrics"].items():  # Workers compile with XLA's optimisations.
    got = two["rows"][2]["metrics"][k]["values"]
    assert got == (stat["values"] if None in stat["values"] else
                   pytest.approx(stat["values"], rel=1e-5)), k



@pytest.mark.parametrize("argv,message", [
    (["--runs", "a"], "NAME=WORKDIR"),
    (["--runs", "a=/nonexistent/run"], "no such directory"),
    (["--runs", "a={run}", "a={run}"], "given twice"),
    (["--runs", "a={run}", "--seeds", "0,x"], "--seeds"),
    (["--runs", "a={run}", "--max-seconds", "nan"], "--max-seconds"),
    (["--runs", "a={run}", "--jobs", "0"], "--jobs"),
])
def test_bad_arguments_exit_2_with_one_line(runs, tmp_path, capsys, argv, message):
  workdirs, _ = runs
  argv = [a.format(run=workdirs["av_flow"]) for a in argv] + ["--output", str(tmp_path / "t")]
  assert paper_table_cmd.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and message in err[0], err
  assert not os.path.exists(tmp_path / "t" / "table.md")
