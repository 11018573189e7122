"""benchmarks/gpu_check.sh --dry-run: the GPU check's whole path on the CPU, so it cannot rot."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_gpu_check_dry_run_measures_every_stage(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # One CPU device, as on a one-GPU machine.
  proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--dry-run",
                         "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "gpu_check.json").read_text())
  assert result["dry_run"] and not result["errors"] and not result["skipped"]
  assert {r["attention"] for r in result["train"]} == {"blocked", "dense", "cudnn"}
  for row in result["train"]:
    assert row["step_ms"] > 0 and row["gflop_per_step"] > 0 and 0 < row["utilisation"] < 1
  assert [r["batch"] for r in result["sample"]] == [1, 2]
  assert result["text_to_av"]["text_to_av_ms"] > 0
  assert result["stream"]["chunk_ms"] > 0 and result["stream"]["lookahead_frames"] > 0
  assert [r["workers"] for r in result["input"]["runs"]] == [0, 1]
  table = (tmp_path / "gpu_check.md").read_text()
  assert "| cudnn | 8 × 48 |" in table and "Grain workers" in table and "Streaming" in table
  assert json.loads(proc.stdout.strip().splitlines()[-1]) == result
  # A bad argument is one line and exit code 2.
  bad = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_check.sh"), "--fast"],
                       env=env, capture_output=True, text=True, check=False)
  assert bad.returncode == 2 and "unknown argument --fast" in bad.stderr
