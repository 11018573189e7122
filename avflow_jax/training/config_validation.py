"""Checks a config against the devices and the data before anything is compiled.

Every message names the config field, so a typo costs seconds, not a failed compile on 64 hosts.
"""

import math
import os

import jax.numpy as jnp

from avflow_jax.core import flow
from avflow_jax.core import sharding
from avflow_jax.models import attention
from avflow_jax.models import av_config
from avflow_jax.models import head_vae


def _fail(field, msg):
  raise ValueError(f"config.{field}: {msg}")


def _get(config, field: str):
  value = config
  for part in field.split("."):
    value = value[part]
  return value


# (field, lowest allowed, highest allowed or None, integer?, lowest included?): every numeric
# knob the loop reads. A value outside its range would train nonsense or lose data
# (keep_checkpoints=0 deletes every checkpoint of a resumed run).
_NUMBERS = (
    ("num_steps", 1, None, True, True),
    ("log_every", 1, None, True, True),
    ("ckpt_every", 1, None, True, True),
    ("keep_checkpoints", 1, None, True, True),
    ("eval_every", 0, None, True, True),
    ("eval_batches", 1, None, True, True),
    ("seed", 0, None, True, True),
    ("data.crop_frames", 1, None, True, True),
    ("data.num_workers", 0, None, True, True),
    ("data.read_threads", 0, None, True, True),
    ("data.cache_mb", 0, None, False, True),
    ("optim.lr", 0, None, False, False),
    ("optim.b1", 0, 1, False, True),
    ("optim.b2", 0, 1, False, True),
    ("optim.weight_decay", 0, None, False, True),
    ("optim.warmup_steps", 0, None, True, True),
    ("optim.grad_clip", 0, None, False, True),
    ("optim.ema_decay", 0, 1, False, True),
    ("sample.temperature", 0, None, False, True),
    ("loss.time_loc", -math.inf, None, False, False),
    ("loss.time_scale", 0, None, False, False),
)


def _validate_numbers(config) -> None:
  """Every numeric field: a finite number (an integer where it counts), inside its range."""
  for field, lo, hi, integer, lo_inclusive in _NUMBERS:
    try:
      value = _get(config, field)
    except (KeyError, AttributeError):
      continue  # Not a knob of this config (e.g. data.cache_mb of an old run).
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      _fail(field, f"{value!r} is not a number")
    if not math.isfinite(value):
      _fail(field, f"{value} must be a finite number")
    if integer and value != int(value):
      _fail(field, f"{value} must be an integer")
    if value < lo or (value == lo and not lo_inclusive) or (hi is not None and value >= hi):
      if hi is not None:
        _fail(field, f"{value} must be in [{lo}, {hi})")
      _fail(field, f"{value} must be {'>=' if lo_inclusive else '>'} {lo}")


def validate(config, manifest: dict, num_devices: int, num_processes: int) -> None:
  """Raises ValueError naming the first bad field."""
  data_size, fsdp_size = sharding.mesh_shape(config.mesh, num_devices)
  shards = data_size * fsdp_size
  if config.batch_size <= 0:
    _fail("batch_size", f"{config.batch_size} must be positive")
  if config.batch_size % shards:
    _fail("batch_size", f"{config.batch_size} is not divisible by the {shards} batch shards of "
          f"the mesh (data={data_size} x fsdp={fsdp_size})")
  if config.batch_size % num_processes:
    _fail("batch_size", f"{config.batch_size} is not divisible by the {num_processes} processes")
  _validate_numbers(config)
  sampling = config.data.get("crop_sampling", "clips")
  if sampling not in ("frames", "clips"):
    _fail("data.crop_sampling", f"{sampling!r} must be 'frames' or 'clips'")
  dims = manifest["dims"]
  if config.task == "av":
    _validate_av_model(config.model)
    kind = config.loss.get("time_sampling", "uniform")
    if kind not in flow.TIME_SAMPLINGS:
      _fail("loss.time_sampling", f"{kind!r}: use one of {flow.TIME_SAMPLINGS}")
    if config.model.get("token_lookahead", 0) >= config.data.crop_frames:
      _fail("model.token_lookahead", f"{config.model.token_lookahead} frames: must be shorter "
            f"than a training crop (data.crop_frames={config.data.crop_frames})")
    for stream in ("face", "mel", "tokens", "head"):
      if not dims.get(stream):
        _fail("data.dir", f"the data has no {stream!r} stream (dims {dims}); the AV model needs "
              "mel, tokens, face and head")
    if config.data.participant and not dims.get("participant"):
      _fail("data.participant", "is True but the data has no participant stream")
    if config.head_vae.get("window") is not None:
      try:
        head_vae.parse_window(config.head_vae.window)
      except ValueError as e:
        _fail("head_vae.window", str(e).split(": ", 1)[1])
  elif config.task == "head_vae":
    if not dims.get("head"):
      _fail("data.dir", f"the data has no head-pose stream (dims {dims})")
  elif config.task == "text_to_tokens":
    held = config.data.get("holdout_split", "")
    splits = sorted(manifest.get("splits", {}))
    if held and held not in splits:
      _fail("data.holdout_split", f"{held!r} is not a split of the data (has {splits}; "
            "'' holds nothing out)")
    if held and held == config.data.get("train_split", "train"):
      _fail("data.holdout_split", f"{held!r} is the training split: nothing would be left")
  else:
    _fail("task", f"{config.task!r}: use 'av', 'head_vae' or 'text_to_tokens'")


def _validate_av_model(m) -> None:
  variant = av_config.variant_of(m)
  if variant not in av_config.VARIANTS:
    _fail("model.variant", f"{variant!r}: use one of {av_config.VARIANTS}")
  for field in ("num_layers", "d_model", "hidden_dim", "num_heads", "attention_block"):
    if m[field] <= 0:
      _fail(f"model.{field}", f"{m[field]} must be positive")
  if m.d_model % m.num_heads:
    _fail("model.num_heads", f"d_model {m.d_model} is not divisible by {m.num_heads} heads")
  if (m.d_model // m.num_heads) % 2:
    _fail("model.num_heads", "the head dim must be even for rotary embeddings")
  try:
    av_config.layer_windows(m.windows, m.num_layers)
  except ValueError as e:
    raise ValueError(str(e)) from None
  ahead = m.get("token_lookahead", 0)
  if not isinstance(ahead, int) or isinstance(ahead, bool) or ahead < 0:
    _fail("model.token_lookahead", f"{ahead!r} must be an integer >= 0 (frames)")
  try:
    jnp.dtype(m.dtype)
  except TypeError:
    _fail("model.dtype", f"{m.dtype!r} is not a dtype (use 'float32' or 'bfloat16')")
  if m.dtype not in ("float32", "bfloat16"):
    _fail("model.dtype", f"{m.dtype!r}: use 'float32' or 'bfloat16'")
  impl = m.get("attention", "blocked")
  if impl not in ("auto",) + attention.IMPLEMENTATIONS:
    _fail("model.attention", f"{impl!r}: use 'auto' or one of {attention.IMPLEMENTATIONS}")
  try:
    av_config.remat_policy(m.get("remat", False))
  except ValueError as e:
    raise ValueError(str(e)) from None
  scan = m.get("scan_layers", False)
  if not isinstance(scan, bool):
    _fail("model.scan_layers", f"{scan!r} must be True or False")
  if scan and variant != "av_flow":
    _fail("model.scan_layers", f"only the av_flow variant has a scanned layout (variant "
          f"{variant!r}); set scan_layers=False")
  if not m.get("fusion", True) and variant != "av_flow":
    _fail("model.fusion", f"False only applies to the av_flow variant ({variant!r} has no "
          "fusion layers); leave it True")
  if scan and len(set(av_config.layer_windows(m.windows, m.num_layers))) > 1:
    _fail("model.scan_layers", "a scanned layer needs the same model.windows for every layer "
          f"(got {m.windows}); set scan_layers=False for per-layer windows")


# Fields a resumed run must keep: they decide the parameters' shapes or what was trained and
# frozen (the head VAE under an AV model). Others (lr, steps, dtype, windows, ...) may change.
_FROZEN = {
    "av": ("model.d_model", "model.num_layers", "model.hidden_dim", "model.num_heads",
           "model.fusion", "model.scan_layers", "model.variant", "data.participant", "data.stats_from", "data.crop_sampling",
           "head_vae"),
    "head_vae": ("vae", "data.crop_sampling"),
    "text_to_tokens": ("model",),
}
# What a frozen field meant in a run saved before the field existed.
_SAVED_DEFAULTS = {"model.scan_layers": False, "model.variant": "av_flow"}
# Inside a frozen subtree, keys that do not change what was trained.
_FREE_KEYS = ("dtype", "remat", "attention", "workdir")


def _plain(value):
  """A JSON-comparable copy (ConfigDicts -> dicts, tuples -> lists)."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items() if k not in _FREE_KEYS}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def check_resume(saved, config, path: str) -> None:
  """Refuses a config that changes what the checkpoints in a workdir were trained with.

  Args:
    saved: the workdir's config.json (as a ConfigDict).
    config: the new config.
    path: the saved config's path (for the message).

  Raises:
    ValueError: naming the field, the new value and the saved one.
  """
  how = (f"the value this workdir's checkpoints were trained with ({path}); resume with it or "
         "train into a new --workdir")
  if saved.get("task") != config.task:
    _fail("task", f"{config.task!r} differs from {saved.get('task')!r}, {how}")
  for field in _FROZEN.get(config.task, ()):
    try:
      old = _plain(_get(saved, field))
    except (KeyError, AttributeError):
      if field not in _SAVED_DEFAULTS:
        continue  # Saved by a version without this field.
      old = _SAVED_DEFAULTS[field]
    new = _plain(_get(config, field))
    if old == new:
      continue
    if isinstance(old, dict) and isinstance(new, dict):
      for key in sorted(set(old) | set(new)):
        if key not in old:
          continue  # A field added after the run was saved: its default is what it trained.
        if old.get(key) != new.get(key):
          _fail(f"{field}.{key}", f"{new.get(key)!r} differs from {old.get(key)!r}, {how}")
      continue  # Only fields added since the save differ.
    _fail(field, f"{new!r} differs from {old!r}, {how}")
  # An explicitly given head-VAE workdir must be the one the AV model was trained on.
  if config.task == "av" and config.head_vae.workdir:
    old = saved.get("head_vae", {}).get("workdir")
    if old and os.path.abspath(os.path.expanduser(config.head_vae.workdir)) != old:
      _fail("head_vae.workdir", f"{config.head_vae.workdir!r} differs from {old!r}, {how}")
