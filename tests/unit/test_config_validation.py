"""Config checks: one line naming the field, before anything compiles or touches a workdir."""

import math
import os

import pytest

from avflow_jax.core import checkpointing
from avflow_jax.models import av_config
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
    ("sample__temperature", -0.5, "config.sample.temperature: -0.5 must be >= 0"),
    ("loss__time_scale", 0.0, "config.loss.time_scale: 0.0 must be > 0"),
    ("loss__time_sampling", "cosine", "config.loss.time_sampling: 'cosine': use one of"),
    ("data__num_workers", -2, "config.data.num_workers: -2 must be >= 0"),
    ("model__token_lookahead", -1, "config.model.token_lookahead: -1 must be an integer >= 0"),
    ("model__token_lookahead", 48, "config.model.token_lookahead: 48 frames: must be shorter "
     r"than a training crop \(data.crop_frames=48\)"),
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


def test_head_vae_window_and_the_stream_config():
  with pytest.raises(ValueError, match=r"config.head_vae.window: \(4, -1\)"):
    _validate(head_vae__window=(4, -1))
  from configs import stream  # pylint: disable=g-import-not-at-top
  c = stream.get_config("0")
  assert c.model.windows == (48, 0) and c.head_vae.window == stream.HEAD_VAE_WINDOW
  assert stream.get_config().model.windows == (48, 2)


def test_layer_windows_one_pair_or_one_per_layer():
  assert av_config.layer_windows((4, 2), 3) == ((4, 2),) * 3
  assert av_config.layer_windows([[1, 0], [2, -1]], 2) == ((1, 0), (2, -1))


@pytest.mark.parametrize("keep", [0, -1])
def test_checkpoint_manager_refuses_to_keep_nothing(tmp_path, keep):
  """LatestN(0) would delete every checkpoint of a resumed run."""
  with pytest.raises(ValueError, match="keep_checkpoints"):
    checkpointing.make_manager(str(tmp_path / "ckpt"), keep=keep)
  assert not (tmp_path / "ckpt").exists() or not list((tmp_path / "ckpt").iterdir())


@pytest.mark.parametrize("field,value,needle", [
    ("model__d_model", 48, "config.model.d_model: 48 differs from 32"),
    ("head_vae__steps", 7, "config.head_vae.steps: 7 differs from"),
    ("head_vae__kld_weight", 0.5, "config.head_vae.kld_weight: 0.5 differs from"),
])
def test_resume_refuses_changes_to_what_was_trained(tiny_shards, tmp_path, field, value,
                                                    needle):
  """A workdir with checkpoints refuses a new model shape or head VAE before anything runs."""
  from avflow_jax.training import loop  # pylint: disable=g-import-not-at-top
  from avflow_jax.training import random_init  # pylint: disable=g-import-not-at-top
  config = tiny.get_config()
  config.data.dir = tiny_shards
  workdir = random_init.init_workdir(config, str(tmp_path / "run"), tiny_shards)
  saved = (tmp_path / "run" / "config.json").read_text()
  assert config.model.d_model == 32
  node = config
  *path, last = field.split("__")
  for p in path:
    node = node[p]
  node[last] = value
  with pytest.raises(ValueError, match=needle + ".*resume with it or train into a new"):
    loop.train_and_evaluate(config, workdir)
  assert (tmp_path / "run" / "config.json").read_text() == saved  # Nothing overwritten.


def test_resume_refuses_another_task_or_listener():
  saved = tiny.get_config()
  new = tiny.get_config()
  new.data.participant = True
  with pytest.raises(ValueError, match="config.data.participant: True differs from False"):
    config_validation.check_resume(saved, new, "config.json")
  new = tiny.get_config()
  new.task = "text_to_tokens"
  with pytest.raises(ValueError, match="config.task: 'text_to_tokens' differs from 'av'"):
    config_validation.check_resume(saved, new, "config.json")


def test_resume_allows_what_does_not_change_the_parameters():
  saved, new = tiny.get_config(), tiny.get_config()
  new.optim.lr, new.num_steps, new.model.dtype, new.model.remat = 1e-5, 99, "bfloat16", "full"
  new.model.attention = "dense"
  config_validation.check_resume(saved, new, "config.json")


def test_resume_keeps_the_layer_layout_even_of_runs_saved_before_the_knob():
  saved, new = tiny.get_config(), tiny.get_config()
  with saved.unlocked():
    del saved.model["scan_layers"]  # Saved before model.scan_layers: its params are per layer.
  config_validation.check_resume(saved, new, "config.json")
  new.model.scan_layers = True
  with pytest.raises(ValueError, match="config.model.scan_layers: True differs from False"):
    config_validation.check_resume(saved, new, "config.json")


def test_resume_accepts_model_fields_added_since_the_run_was_saved():
  saved, new = tiny.get_config(), tiny.get_config()
  with saved.unlocked():
    del saved.head_vae["kld_weight"]  # As a run saved before the field existed.
  config_validation.check_resume(saved, new, "config.json")
  new.head_vae.ff_dim = 48  # A field the saved run has still counts.
  with pytest.raises(ValueError, match="config.head_vae.ff_dim: 48 differs from"):
    config_validation.check_resume(saved, new, "config.json")


def test_misspelt_config_field_is_one_line_with_the_closest_name():
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  for flag, want in (("--config.modle.d_model=3",
                      "error: --config.modle.d_model: the config has no field 'modle'; did "
                      "you mean 'model'?"),
                     ("--config.model.d_modle=3",
                      "error: --config.model.d_modle: the config has no field 'd_modle'; did "
                      "you mean 'd_model'?")):
    proc = subprocess.run([sys.executable, "-m", "avflow_jax.train", "--config",
                           "configs/tiny.py", flag, "--workdir", "/nonexistent/x"],
                          capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                              os.path.abspath(__file__)))))
    assert proc.returncode == 1
    assert proc.stderr.strip() == want
