"""The official AV-Flow release -> avflow_jax run directories (no torch).

`import_release` reads the official files with the restricted torch reader (only the storages
it keeps are read: the model's weights, and Adam's moments when asked) and writes one run
directory that `sample`, `evaluate`, `api.Avatar.load` and `train` (`--config.init.workdir`)
accept as they are:

  RUN/config.json             the AV run config (the given config with the file's sizes)
  RUN/checkpoints/ITER/       params (no EMA: the official trainer keeps none), and with
                              `adam_moments` the official exp_avg / exp_avg_sq ("official_adam")
  RUN/normalisation/          manifest.json: dims and the official statistics (no shards)
  RUN/head_vae/               the imported head-pose VAE (a head-VAE run directory)
  RUN/text_to_tokens/         the imported text-to-tokens model, when given

The official normalisation (../shared/spec/official_checkpoints.md §4) becomes manifest stats,
so the project's sampler applies it unchanged: the mel's scalar affine (-5.5366, 2.1161) on every
band, raw face codes and tokens (mean 0, std 1), the head pose z-scored per dimension with the
release's `headpose_normstats` (quaternion then translation), the participant features as the
data (data_prep already min-max scales SMIRK with the release's statistics, which the manifest
records). The whole directory is written beside RUN and renamed at the end: a failure leaves
nothing.
"""

import dataclasses
import glob
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Optional

import jax
import ml_collections
import numpy as np

from avflow_jax.core import constants as C
from avflow_jax.core import files
from avflow_jax.core import run_dir
from avflow_jax.core import torch_reader
from avflow_jax.core.errors import AvatarError
from avflow_jax.core.safe_files import UntrustedFileError
from avflow_jax.inference import official_t2t
from avflow_jax.models import av_config
from avflow_jax.models import dit
from avflow_jax.models import head_vae as head_vae_lib
from avflow_jax.models import official_keys

# The official mel normalisation: one scalar affine for all bands (audio_encoders.py:33-47).
MEL_MEAN, MEL_STD = C.OFFICIAL_MEL_MEAN, C.OFFICIAL_MEL_STD
NORMALISATION_DIR = "normalisation"
T2T_DIR = "text_to_tokens"
HEAD_STATS = ("head_qvec_mean", "head_qvec_std", "head_translation_mean", "head_translation_std")
PARTICIPANT_STATS = ("expression_min", "expression_max", "headpose_min", "headpose_max")


@dataclasses.dataclass
class ReleaseFiles:
  """Paths of the official files to import (None: not imported)."""
  av: Optional[str] = None  # av_flow_ckpt_50h.pt or any checkpoints/iter-XXXXXXX.pt
  head_vae: Optional[str] = None  # head_vae/iter-0500000.pt
  text_to_tokens: Optional[str] = None  # text_to_tokens.pth
  head_stats: Optional[str] = None  # headpose/headpose_normstats/ (4 .npy files)
  participant_stats: Optional[str] = None  # participant/camera01/smirk_outputs/stats/


def _one(release: str, patterns: list[str]) -> Optional[str]:
  for pattern in patterns:
    found = sorted(glob.glob(os.path.join(release, pattern), recursive=True))
    if found:
      return found[-1]  # iter-XXXXXXX names sort by iteration.
  return None


def find_release_files(release: str) -> ReleaseFiles:
  """Locates the official files under a release download directory.

  Raises:
    AvatarError: the directory is missing or holds no AV checkpoint.
  """
  release = os.path.abspath(os.path.expanduser(release))
  if not os.path.isdir(release):
    raise AvatarError(f"--release {release}: no such directory")
  found = ReleaseFiles(
      av=_one(release, ["av_flow_ckpt*.pt", "**/av_flow_ckpt*.pt", "**/checkpoints/iter-*.pt"]),
      head_vae=_one(release, ["**/head_vae/iter-*.pt"]),
      text_to_tokens=_one(release, ["text_to_tokens.pth", "**/text_to_tokens.pth"]))
  stats = _one(release, ["**/headpose_normstats/head_qvec_mean.npy"])
  found.head_stats = os.path.dirname(stats) if stats else None
  smirk = _one(release, ["**/smirk_outputs/stats/expression_min.npy"])
  found.participant_stats = os.path.dirname(smirk) if smirk else None
  if found.av is None:
    raise AvatarError(f"--release {release}: no av_flow_ckpt*.pt (or checkpoints/iter-*.pt) "
                      "under it; give the file with --av")
  return found


def _read(path: str, what: str, load: Callable[[tuple], bool]) -> Any:
  """The file's unpickled structure (tensors for the key paths `load` selects)."""
  if not os.path.isfile(path):
    raise AvatarError(f"{what} {path}: file missing")
  try:
    return torch_reader.read_torch_checkpoint(path, load=load)
  except (UntrustedFileError, OSError) as e:
    raise AvatarError(f"{what} {e}" if path in str(e) else f"{what} {path}: {e}") from e


def _state_dict(obj: Any, path: str, what: str) -> dict:
  """The `model_state_dict` of a trainer checkpoint, or the file itself if it is a state dict."""
  if isinstance(obj, dict) and "model_state_dict" in obj:
    obj = obj["model_state_dict"]
  if not isinstance(obj, dict) or not obj or not all(isinstance(k, str) for k in obj):
    raise AvatarError(f"{what} {path}: not an official checkpoint (no model_state_dict of "
                      "named tensors)")
  bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
  if bad:
    raise AvatarError(f"{what} {path}: key {bad[0]!r} is not a tensor")
  return obj


def _mapped(fn, path: str, what: str, *args, **kwargs):
  try:
    return fn(*args, **kwargs)
  except ValueError as e:
    raise AvatarError(f"{what} {path}: {e}") from e


def _load_vector(directory: str, name: str, size: int, what: str) -> np.ndarray:
  path = os.path.join(directory, name + ".npy")
  if not os.path.isfile(path):
    raise AvatarError(f"{what} {path}: file missing")
  try:
    x = np.load(path, allow_pickle=False)
  except (OSError, ValueError, EOFError) as e:
    raise AvatarError(f"{what} {path}: not a readable .npy ({e})") from e
  x = np.asarray(x, np.float64).reshape(-1) if np.issubdtype(x.dtype, np.number) else None
  if x is None or x.shape != (size,) or not np.isfinite(x).all():
    raise AvatarError(f"{what} {path}: expected {size} finite numbers")
  return x


def head_normstats(directory: str) -> dict[str, np.ndarray]:
  """The release's head-pose statistics: qvec mean/std (4,), translation mean/std (3,)."""
  out = {n: _load_vector(directory, n, 4 if "qvec" in n else 3, "--head-stats")
         for n in HEAD_STATS}
  for n in ("head_qvec_std", "head_translation_std"):
    if (out[n] <= 0).any():
      raise AvatarError(f"--head-stats {directory}/{n}.npy: a standard deviation is <= 0")
  return out


def participant_minmax(directory: str) -> dict[str, list]:
  """The release's SMIRK min/max (expression 55, head 3), as data_prep applies them."""
  return {n: _load_vector(directory, n, 55 if "expression" in n else 3,
                          "--participant-stats").tolist() for n in PARTICIPANT_STATS}


def official_stats(dims: dict, head_stats: Optional[dict]) -> dict:
  """Manifest `stats` that make the project's normalisation the official one."""
  ident = lambda d: {"mean": [0.0] * d, "std": [1.0] * d}
  stats = {"mel": {"mean": [MEL_MEAN] * dims["mel"], "std": [MEL_STD] * dims["mel"]},
           "tokens": ident(dims["tokens"]), "face": ident(dims["face"]),
           "head": ident(dims["head"])}
  if dims["head"] == 7:
    if head_stats is None:
      raise AvatarError("the 7-d head pose needs the release's headpose_normstats (--head-stats "
                        "DIR, or a --release that holds headpose/headpose_normstats/)")
    stats["head"] = {
        "mean": np.concatenate([head_stats["head_qvec_mean"],
                                head_stats["head_translation_mean"]]).tolist(),
        "std": np.concatenate([head_stats["head_qvec_std"],
                               head_stats["head_translation_std"]]).tolist()}
  if dims.get("participant"):
    stats["participant"] = ident(dims["participant"])
  return stats


def _to_device(tree: dict) -> dict:
  """Copies the leaves to the default device one at a time, dropping each host array in turn.

  With `consume`d mapping, the only reference to an imported weight is its leaf, so memory
  stays about one copy of the weights (orbax would otherwise copy the whole tree at once).
  """
  for key in list(tree):
    value = tree[key]
    if isinstance(value, dict):
      tree[key] = _to_device(value)
    else:
      tree[key] = jax.device_put(np.ascontiguousarray(value))
      del value
  return tree


def _adam_trees(obj: dict, keys: list[str], params_of: Callable[[dict], dict], path: str,
                what: str) -> dict:
  """Adam's moments of an official checkpoint as parameter trees, plus its step count."""
  opt = obj.get("optimizer_state_dict") if isinstance(obj, dict) else None
  state = opt.get("state") if isinstance(opt, dict) else None
  if not state:
    raise AvatarError(f"{what} {path}: the file holds no Adam state (optimizer_state_dict.state "
                      "is empty); import without --adam-moments")
  mu, nu, steps = {}, {}, set()
  for i, key in enumerate(keys):
    entry = state.get(i)
    if not isinstance(entry, dict) or not all(
        isinstance(entry.get(k), np.ndarray) for k in ("exp_avg", "exp_avg_sq")):
      raise AvatarError(f"{what} {path}: optimizer state has no exp_avg/exp_avg_sq for "
                        f"parameter {i} ({key})")
    mu[key], nu[key] = entry.pop("exp_avg"), entry.pop("exp_avg_sq")
    steps.add(float(np.asarray(entry.get("step", 0.0))))
  return {"mu": params_of(mu), "nu": params_of(nu), "count": np.int32(max(steps))}


def _av_run_config(config, arch: dict, dims: dict, workdir: str, source: dict):
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.task = "av"
    c.model.d_model, c.model.hidden_dim = arch["d_model"], arch["hidden_dim"]
    c.model.num_layers = arch["num_layers"]
    # The official per-layer layout; a run with model.scan_layers starts from it through
    # config.init.workdir (the layouts convert on load).
    c.model.scan_layers = False
    c.data.participant = bool(dims.get("participant"))
    c.data.dir = os.path.join(workdir, NORMALISATION_DIR)
    # Also the statistics' source: `--data-dir SHARDS` (to evaluate on a dataset) must not
    # replace the official normalisation with the dataset's.
    c.data.stats_from = c.data.dir
    c.head_vae.workdir = os.path.join(workdir, run_dir.HEAD_VAE_DIR)
    c.official_import = source
  try:
    av_config.layer_windows(c.model.windows, c.model.num_layers)
  except ValueError as e:
    raise AvatarError(f"--config: {e} (the file has {arch['num_layers']} layers)") from e
  return c


def _import_head_vae(path: str, workdir: str, log) -> tuple[int, int]:
  """Writes WORKDIR/head_vae; returns (head dims, latent dims)."""
  obj = _read(path, "--head-vae", lambda kp: kp[:1] == ("model_state_dict",) or len(kp) == 1)
  state = _state_dict(obj, path, "--head-vae")
  arch = _mapped(official_keys.head_vae_architecture, path, "--head-vae", state)
  cfg = ml_collections.ConfigDict({"task": "head_vae", "vae": head_vae_lib.default_config()})
  with cfg.unlocked():
    cfg.vae.hidden, cfg.vae.latent_dim, cfg.vae.ff_dim = (arch["hidden"], arch["latent_dim"],
                                                          arch["ff_dim"])
    cfg.vae.kld_weight = 1e-4  # What the official AV trainer builds it with.
    cfg.official_import = {"head_vae": os.path.abspath(path)}
  model = head_vae_lib.from_config(cfg, arch["input_dim"])
  expected = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), np.zeros((1, 4, arch["input_dim"]), np.float32))["params"])
  params = _mapped(official_keys.head_vae_params_from_official, path, "--head-vae", state,
                   cfg.vae.num_heads, expected)
  vae_dir = os.path.join(workdir, run_dir.HEAD_VAE_DIR)
  step = int(obj.get("iteration", 0)) if isinstance(obj, dict) else 0
  official_t2t.save_checkpoint(vae_dir, step, {"step": np.int32(step), "params": params})
  official_t2t.write_config(vae_dir, cfg)
  log(f"head VAE: {len(state)} tensors, {arch['input_dim']}-d pose <-> {arch['latent_dim']}-d "
      f"latent (iteration {step})")
  return arch["input_dim"], arch["latent_dim"]


def _import_av(files_: ReleaseFiles, workdir: str, final: str, config, *, dyadic, adam: bool,
               head_dim: int, latent_dim: int, log) -> dict:
  path = files_.av
  keep = lambda kp: (kp[:1] == ("model_state_dict",) or len(kp) == 1
                     or (adam and kp[:1] == ("optimizer_state_dict",)))
  obj = _read(path, "--av", keep)
  state = _state_dict(obj, path, "--av")
  if isinstance(obj, dict) and "model_state_dict" in obj:
    obj["model_state_dict"] = None  # `state` holds the only reference: freed as it is mapped.
  keys = list(state)
  num_params = sum(int(np.prod(v.shape)) for v in state.values())
  arch = _mapped(official_keys.av_architecture, path, "--av", state)
  if arch["visual"] <= latent_dim:
    raise AvatarError(f"--av {path}: visual width {arch['visual']} leaves no face codes next to "
                      f"the head VAE's {latent_dim}-d latent")
  participant = arch["cond"] - C.TOKEN_DIM
  if participant not in (0, C.PARTICIPANT_DIM) or arch["cond_audio"] != arch["cond"]:
    raise AvatarError(f"--av {path}: conditioning width {arch['cond']} is neither {C.TOKEN_DIM} "
                      f"(plain) nor {C.TOKEN_DIM + C.PARTICIPANT_DIM} (dyadic)")
  if dyadic is not None and bool(participant) != dyadic:
    raise AvatarError(f"--av {path}: --dyadic={dyadic} but the file's conditioning width "
                      f"{arch['cond']} says {'dyadic' if participant else 'plain'}")
  dims = {"mel": arch["audio"], "tokens": C.TOKEN_DIM, "face": arch["visual"] - latent_dim,
          "head": head_dim, "participant": participant}
  iteration = int(obj.get("iteration", 0)) if isinstance(obj, dict) else 0
  source = {"av": os.path.abspath(path), "iteration": iteration,
            "head_vae": files_.head_vae and os.path.abspath(files_.head_vae),
            "mel_weight_used_by_official_trainer": 0.2}
  cfg = _av_run_config(config, arch, dims, final, source)
  model = dit.make_av_model(cfg.model, av_config.AVDims.from_data(dims, latent_dim, bool(participant)))
  expected = jax.eval_shape(lambda: dit.init_av_params(
      model, av_config.AVDims.from_data(dims, latent_dim, bool(participant)), jax.random.PRNGKey(0)))
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  expected = nn.unbox(expected)
  params = _to_device(_mapped(official_keys.av_params_from_official, path, "--av", state,
                              expected, consume=True))
  # No "ema": the official trainer keeps none, and sampling falls back to the params.
  tree = {"step": np.int32(iteration), "params": params}
  if adam:
    tree["official_adam"] = _adam_trees(
        obj, keys, lambda d: _to_device(_mapped(official_keys.av_params_from_official, path,
                                                "--av", d, expected, consume=True)),
        path, "--av")
  official_t2t.save_checkpoint(workdir, iteration, tree)
  official_t2t.write_config(workdir, cfg)
  n = num_params
  log(f"AV model: {len(keys)} tensors, {n:,} parameters, {arch['num_layers']} layers x "
      f"{arch['d_model']}, {'dyadic' if participant else 'plain'} (iteration {iteration})"
      + (", with Adam moments" if adam else ""))
  return dims


def _write_normalisation(workdir: str, dims: dict, files_: ReleaseFiles) -> None:
  head = head_normstats(files_.head_stats) if files_.head_stats else None
  minmax = participant_minmax(files_.participant_stats) if files_.participant_stats else None
  manifest = {
      "format_version": 1, "source_format": "official_release",
      "frame_rate": C.FRAME_RATE, "sample_rate": C.SAMPLE_RATE, "hop_length": C.HOP_LENGTH,
      "dims": dims, "head_kind": "quat_trans" if dims["head"] == 7 else "a2p_4d",
      "splits": {}, "stats": official_stats(dims, head), "face_decoder": None,
      "official": {"mel_affine": [MEL_MEAN, MEL_STD], "audio_gain": C.AUDIO_GAIN,
                   "head_normstats": {k: v.tolist() for k, v in head.items()} if head else None,
                   "participant_smirk_minmax": minmax,
                   "note": "participant features are [tokens raw ; SMIRK min-max scaled to "
                           "[-1, 1] with participant_smirk_minmax], as data_prep writes them"}}
  files.write_atomic(os.path.join(workdir, NORMALISATION_DIR, "manifest.json"),
                     json.dumps(manifest, indent=1))


def import_release(files_: ReleaseFiles, workdir: str, config, *, dyadic: Optional[bool] = None,
                   adam_moments: bool = False, log=print) -> str:
  """Imports the official files into a new run directory (see the module docstring).

  Args:
    files_: the files to import (`find_release_files`, or given one by one).
    workdir: the run directory to create (must not exist).
    config: the AV run config to record (configs/official_50h.py); its model sizes are
      replaced by the file's, its windows and heads are kept (the file does not store them).
    dyadic: None infers it from the conditioning width; True/False checks it.
    adam_moments: also import the AV file's Adam moments (for `--config.init.adam_moments`).
    log: progress lines.

  Returns:
    The absolute path of the run directory.

  Raises:
    AvatarError: one line naming the file (and key) that is missing, foreign or mis-shaped.
  """
  final = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(final):
    raise AvatarError(f"--workdir {final}: already exists (import into a new directory)")
  if not files_.av or not files_.head_vae:
    raise AvatarError("the import needs the AV checkpoint (--av) and its head VAE (--head-vae)")
  os.makedirs(os.path.dirname(final), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.", suffix=".partial",
                         dir=os.path.dirname(final))
  try:
    head_dim, latent = _import_head_vae(files_.head_vae, tmp, log)
    dims = _import_av(files_, tmp, final, config, dyadic=dyadic, adam=adam_moments,
                      head_dim=head_dim, latent_dim=latent, log=log)
    _write_normalisation(tmp, dims, files_)
    if files_.text_to_tokens:
      official_t2t.import_text_to_tokens(files_.text_to_tokens, os.path.join(tmp, T2T_DIR), log)
    os.rename(tmp, final)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return final
