"""The sampling length limit: `Avatar`, `sample` and `evaluate` refuse a too long input in one
line, before anything is sampled."""

import numpy as np
import pytest

from avflow_jax.core import constants as C
from avflow_jax.core.errors import AvatarError
from avflow_jax.evaluation import scoring
from avflow_jax.inference import avatar as avatar_lib
from avflow_jax.inference import buckets
from tests.integration import test_api


@pytest.fixture(scope="module")
def workdir(tiny_shards):
  return test_api.avatar_workdir(tiny_shards)


@pytest.fixture
def no_sampling(monkeypatch):
  """Makes any call of the compiled sampler fail: the limit must act before it."""
  class Refuse:
    def __call__(self, *args, **kwargs):
      raise AssertionError("the sampler ran")

    def _cache_size(self):
      return 0

  monkeypatch.setattr(avatar_lib, "_sample_padded", Refuse())


def test_default_limit_passes_ten_minutes():
  assert buckets.DEFAULT_MAX_SECONDS == 1200.0
  buckets.check_length(int(600 * C.FRAME_RATE))  # 10 minutes: accepted.
  buckets.check_length(int(1200 * C.FRAME_RATE))  # 20 minutes exactly: accepted.
  with pytest.raises(AvatarError) as e:
    buckets.check_length(int(3600 * C.FRAME_RATE), what="--tokens x.npy")
  msg = str(e.value)
  assert "\n" not in msg and "--tokens x.npy is 3600.0 s" in msg and "limit of 1200 s" in msg
  for bad in (0, -1, float("nan"), "x"):
    with pytest.raises(AvatarError, match="must be a number of seconds > 0"):
      buckets.check_max_seconds(bad)
  assert buckets.check_max_seconds(float("inf")) == float("inf")


def test_avatar_refuses_before_sampling(workdir, no_sampling):
  avatar = avatar_lib.Avatar.load(workdir, max_seconds=2.0)
  assert avatar.max_frames() == int(2.0 * C.FRAME_RATE)
  tok = np.zeros((int(3 * C.FRAME_RATE), C.TOKEN_DIM), np.float32)
  with pytest.raises(AvatarError, match=r"tokens is 3\.0 s \(\d+ frames\), longer than the "
                     r"sampling limit of 2 s"):
    avatar.sample_motion(tok)
  assert avatar_lib.Avatar.load(workdir, max_seconds=float("inf")).max_frames() is None
  with pytest.raises(AvatarError, match="max_seconds"):
    avatar_lib.Avatar.load(workdir, max_seconds=0)


def test_evaluate_whole_clips_refuses_a_long_clip(workdir, no_sampling, monkeypatch, tmp_path,
                                                   capsys):
  init = avatar_lib.Avatar.__init__

  def short_limit(self, *args, **kwargs):  # The synthetic clips are a few seconds long.
    init(self, *args, **kwargs)
    self.max_seconds = 1.0

  monkeypatch.setattr(avatar_lib.Avatar, "__init__", short_limit)
  out = tmp_path / "report.json"
  argv = ["--workdir", workdir, "--split", "val", "--output", str(out), "--no-wer"]
  assert scoring.main(argv + ["--max-seconds", "0"]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1, lines
  assert lines[0].startswith("error: clip ") and "longer than the sampling limit of 1 s" in lines[0]
  assert "--max-seconds S <= 1" in lines[0]
  assert not out.exists()
  # Cropping each clip to the limit's length passes the check (then samples: refused here).
  with pytest.raises(AssertionError, match="the sampler ran"):
    scoring.main(argv + ["--max-seconds", "1"])
