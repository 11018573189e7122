"""Config checks: one line naming the field, before anything compiles or touches a workdir."""

import math

import pytest

from avflow_jax.core import checkpointing
from avflow_jax.models import dit
from avflow_jax.training import config_validation
from configs import tiny

MANIFEST = {"dims": {"mel": 80, "tokens": 29, "face": 256, "head": 7, "participant": 0},
            "splits": {"train": {}, "val": {}}}


def _validate(**overrides):
  c = tiny.get_config()
  for field, value in overrides.items():
    node = c
    *path, last = field.split("__")
    for p in path:
      node = node[p]
    node[last] = value
  config_validation.validate(c, MANIFEST, num_devices=8, num_processes=1)


def test_tiny_config_is_valid():
  _validate()


@pytest.mark.parametrize("field,value,message", [
    ("keep_checkpoints", 0, "config.keep_checkpoints: 0 must be >= 1"),
    ("keep_checkpoints", -1, "config.keep_checkpoints: -1 must be >= 1"),
    ("optim__lr", math.nan, "config.optim.lr: nan must be a finite number"),
    ("optim__lr", 0.0, "config.optim.lr: 0.0 must be > 0"),
    ("optim__ema_decay", 1.0, r"config.optim.ema_decay: 1.0 must be in \[0, 1\)"),
    ("optim__grad_clip", math.inf, "config.optim.grad_clip: inf must be a finite number"),
    ("eval_batches", 0, "config.eval_batches: 0 must be >= 1"),
    ("data__num_workers", -2, "config.data.num_workers: -2 must be >= 0"),
])
def test_out_of_range_numbers_name_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    _validate(**{field: value})


@pytest.mark.parametrize("windows,message", [
    ((4.5, 2), r"\(4.5, 2\) is not a \(left, right\) pair of integers"),
    ((4, -2), "use sizes >= 0, or -1"),
    (((4, 2),) * 3, "3 pairs for 2 layers"),
])
def test_bad_windows_name_the_field(windows, message):
  with pytest.raises(ValueError, match=r"config.model.windows: .*" + message):
    _validate(model__windows=windows)


def test_layer_windows_one_pair_or_one_per_layer():
  assert dit.layer_windows((4, 2), 3) == ((4, 2),) * 3
  assert dit.layer_windows([[1, 0], [2, -1]], 2) == ((1, 0), (2, -1))


@pytest.mark.parametrize("keep", [0, -1])
def test_checkpoint_manager_refuses_to_keep_nothing(tmp_path, keep):
  """LatestN(0) would delete every checkpoint of a resumed run."""
  with pytest.raises(ValueError, match="keep_checkpoints"):
    checkpointing.make_manager(str(tmp_path / "ckpt"), keep=keep)
  assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())
