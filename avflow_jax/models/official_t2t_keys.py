"""The official AV-Flow text-to-tokens state dict (`text_to_tokens.pth`) <-> `TextToTokens`.

The official file is a plain Matcha-TTS state dict with 29 output features: every parameter
(303 tensors, 17,972,347 values at the released size; 239 in the test fixture) plus two 0-d
buffers, `mean` and `std`, the token statistics the decoder normalises with. They override the
constructor's -2.8461 / 4.5255, so they are read from the file and carried as the model config
fields `token_mean` / `token_std` (../shared/spec/official_checkpoints.md §3).

Mapping (official -> Flax), each parameter one to one:

* Conv1d weight (out, in, k) -> `nn.Conv` kernel (k, in, out); a 1x1 Conv1d (the encoder's
  attention projections, `proj`, `proj_m`, `res_conv`, `final_proj`) -> `nn.Dense` kernel
  W[:, :, 0].T; Linear weight (out, in) -> Dense kernel W.T; biases as they are.
* ConvTranspose1d weight (in, out, k) -> `nn.ConvTranspose` kernel (k, in, out), flipped along k.
* The encoder's channel LayerNorm gamma / beta -> LayerNorm scale / bias; torch LayerNorm and
  GroupNorm weight / bias -> scale / bias; SnakeBeta alpha / beta and the embedding as they are.

Shapes give every width, depth and kernel size (`model_config_from_official`). What no shape
says (head counts, dropouts, sigma_min) takes the official hyperparameters
(utils/text_to_tokens.py:24-45): 2 encoder heads, 2 decoder heads, dropouts 0.1 (encoder,
duration predictor), 0.5 (prenet), 0.05 (decoder), sigma_min 1e-4.

Differences from the official behaviour, by design (the weights are the same):

* Padding. `TextToTokens` is padding-invariant: decoder attention masks padded keys (the
  official decoder adds the 0/1 mask as a bias, which masks nothing), its GroupNorm statistics
  use valid frames only (the official ones include padded frames), and it pads frames to a
  fixed `max_frames` (the official code pads to a multiple of 4). Unpadded inputs agree (the
  tests: encoder 1e-5, estimator and the whole 10-step sample 1e-4); a padded utterance's
  decoder output differs (the fixtures show 0.15-0.29 relative on valid frames). The encoder
  masks padded symbols in both, so it agrees on padded batches too.
* Dropout. The official `get_tokens_from_text` never calls `.eval()`, so its inference runs
  with dropout active (prenet 0.5, encoder and duration predictor 0.1, decoder 0.05): durations
  and mu change from run to run and no exact replay exists. avflow_jax synthesises in
  deterministic eval mode (dropout off), as the fixture outputs were made (`model.eval()`).
* Noise. The official sampler draws z as (B, 29, ceil4(y_len)), channels first; `synthesize`
  takes an optional channels-last `x0` (B, max_frames, 29) to replay it (transpose, then pad).

All functions are pure numpy on the state-dict side: a state dict is {official key: array}, a
parameter tree the nested dict Flax uses. A key missing, left over or of the wrong shape raises
`ValueError` with one line naming the key (and the expected and found shapes).
"""

import math
import re
from typing import Any, Iterator, Mapping, NamedTuple

import jax
import numpy as np

from avflow_jax.models import text_to_tokens

ENC = "encoder."
DEC = "decoder.estimator."
STAT_KEYS = ("mean", "std")  # the 0-d token-statistics buffers, first in the official file.

# Official values of the model fields that no tensor shape gives (utils/text_to_tokens.py).
OFFICIAL_FIXED = {
    "enc_heads": 2,
    "enc_dropout": 0.1,
    "prenet_dropout": 0.5,
    "dp_dropout": 0.1,
    "dec_heads": 2,
    "dec_dropout": 0.05,
    "sigma_min": 1e-4,
}

# How an official tensor becomes a Flax leaf.
_COPY, _EMBED, _LINEAR = "copy", "embed", "linear"
_CONV1X1, _CONV, _CONVT = "conv1x1", "conv", "conv_transpose"
# Rank of each kind's Flax leaf.
_FLAX_NDIM = {_COPY: 1, _EMBED: 2, _LINEAR: 2, _CONV1X1: 2, _CONV: 3, _CONVT: 3}

Path = tuple[str, ...]


class _Layout(NamedTuple):
  """The repeat counts that decide which keys exist (widths only decide shapes)."""
  prenet_layers: int
  enc_layers: int
  dec_levels: int
  dec_blocks: int
  dec_mid_blocks: int


# ---------------------------------------------------------------------------- the key table


def _wb(path: Path, key: str, kind: str, bias: bool = True) -> Iterator[tuple[Path, str, str]]:
  yield path + ("kernel",), key + ".weight", kind
  if bias:
    yield path + ("bias",), key + ".bias", _COPY


def _norm(path: Path, key: str, names=("weight", "bias")) -> Iterator[tuple[Path, str, str]]:
  yield path + ("scale",), f"{key}.{names[0]}", _COPY
  yield path + ("bias",), f"{key}.{names[1]}", _COPY


def _resnet(path: Path, key: str) -> Iterator[tuple[Path, str, str]]:
  """Matcha's ResnetBlock1D (mlp.1, block1, block2, res_conv) -> `ResnetBlock1D`."""
  yield from _wb(path + ("Dense_0",), key + ".mlp.1", _LINEAR)
  for j in (0, 1):
    yield from _wb(path + (f"Block1D_{j}", "Conv_0"), f"{key}.block{j + 1}.block.0", _CONV)
    yield from _norm(path + (f"Block1D_{j}", "GroupNorm_0"), f"{key}.block{j + 1}.block.1")
  yield from _wb(path + ("res_conv",), key + ".res_conv", _CONV1X1)


def _transformer(path: Path, key: str) -> Iterator[tuple[Path, str, str]]:
  """diffusers' BasicTransformerBlock with a SnakeBeta feed-forward -> `TransformerBlock`."""
  yield from _norm(path + ("norm1",), key + ".norm1")
  for name in ("to_q", "to_k", "to_v"):
    yield from _wb(path + (name,), f"{key}.attn1.{name}", _LINEAR, bias=False)
  yield from _wb(path + ("to_out",), key + ".attn1.to_out.0", _LINEAR)
  yield from _norm(path + ("norm3",), key + ".norm3")
  yield path + ("ff_act", "alpha"), key + ".ff.net.0.alpha", _COPY
  yield path + ("ff_act", "beta"), key + ".ff.net.0.beta", _COPY
  yield from _wb(path + ("ff_act", "Dense_0"), key + ".ff.net.0.proj", _LINEAR)
  yield from _wb(path + ("ff_out",), key + ".ff.net.2", _LINEAR)


def _entries(layout: _Layout) -> Iterator[tuple[Path, str, str]]:
  """(Flax path, official key, kind) of every parameter, in the official file's order."""
  te, est = ("text_encoder",), ("estimator",)
  yield te + ("Embed_0", "embedding"), ENC + "emb.weight", _EMBED
  pre, pre_key = te + ("prenet",), ENC + "prenet."
  for i in range(layout.prenet_layers):
    yield from _wb(pre + (f"Conv_{i}",), f"{pre_key}conv_layers.{i}", _CONV)
  for i in range(layout.prenet_layers):
    yield from _norm(pre + (f"LayerNorm_{i}",), f"{pre_key}norm_layers.{i}", ("gamma", "beta"))
  yield from _wb(pre + ("Dense_0",), pre_key + "proj", _CONV1X1)
  enc, enc_key = te + ("encoder",), ENC + "encoder."
  for i in range(layout.enc_layers):
    for flax_name, name in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "o")):
      yield from _wb(enc + (f"attn_{i}", flax_name), f"{enc_key}attn_layers.{i}.conv_{name}",
                     _CONV1X1)
  for i in range(layout.enc_layers):
    yield from _norm(enc + (f"norm1_{i}",), f"{enc_key}norm_layers_1.{i}", ("gamma", "beta"))
  for i in range(layout.enc_layers):
    for j in (0, 1):
      yield from _wb(enc + (f"ffn_{i}", f"Conv_{j}"), f"{enc_key}ffn_layers.{i}.conv_{j + 1}",
                     _CONV)
  for i in range(layout.enc_layers):
    yield from _norm(enc + (f"norm2_{i}",), f"{enc_key}norm_layers_2.{i}", ("gamma", "beta"))
  yield from _wb(te + ("proj_m",), ENC + "proj_m", _CONV1X1)
  dp, dp_key = te + ("proj_w",), ENC + "proj_w."
  for j in (0, 1):
    yield from _wb(dp + (f"Conv_{j}",), f"{dp_key}conv_{j + 1}", _CONV)
    yield from _norm(dp + (f"LayerNorm_{j}",), f"{dp_key}norm_{j + 1}", ("gamma", "beta"))
  yield from _wb(dp + ("Dense_0",), dp_key + "proj", _CONV1X1)

  yield from _wb(est + ("time_mlp_1",), DEC + "time_mlp.linear_1", _LINEAR)
  yield from _wb(est + ("time_mlp_2",), DEC + "time_mlp.linear_2", _LINEAR)
  last = layout.dec_levels - 1
  for part, n in (("down", layout.dec_levels), ("mid", layout.dec_mid_blocks),
                  ("up", layout.dec_levels)):
    for i in range(n):
      key = f"{DEC}{part}_blocks.{i}"
      yield from _resnet(est + (f"{part}{i}_res",), key + ".0")
      for j in range(layout.dec_blocks):
        yield from _transformer(est + (f"{part}{i}_tf{j}",), f"{key}.1.{j}")
      if part == "mid":
        continue
      if i < last:  # Downsample1D (stride-2 conv) / Upsample1D (transposed conv), in `.conv`.
        yield from _wb(est + (f"{part}{i}_sample",), key + ".2.conv",
                       _CONV if part == "down" else _CONVT)
      else:  # a plain Conv1d k3.
        yield from _wb(est + (f"{part}{i}_sample",), key + ".2", _CONV)
  yield from _wb(est + ("final_block", "Conv_0"), DEC + "final_block.block.0", _CONV)
  yield from _norm(est + ("final_block", "GroupNorm_0"), DEC + "final_block.block.1")
  yield from _wb(est + ("final_proj",), DEC + "final_proj", _CONV1X1)


# ------------------------------------------------------------------------------ conversions


def _to_flax(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == _LINEAR:
    x = x.T
  elif kind == _CONV1X1:
    x = x[:, :, 0].T
  elif kind == _CONV:
    x = x.transpose(2, 1, 0)
  elif kind == _CONVT:
    x = x.transpose(2, 0, 1)[::-1]
  return np.ascontiguousarray(x, np.float32)


def _to_official(x: np.ndarray, kind: str) -> np.ndarray:
  if kind == _LINEAR:
    x = x.T
  elif kind == _CONV1X1:
    x = x.T[:, :, None]
  elif kind == _CONV:
    x = x.transpose(2, 1, 0)
  elif kind == _CONVT:
    x = x[::-1].transpose(1, 2, 0)
  return np.ascontiguousarray(x, np.float32)


def _official_shape(flax_shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
  s = tuple(int(d) for d in flax_shape)
  if kind == _LINEAR:
    return (s[1], s[0])
  if kind == _CONV1X1:
    return (s[1], s[0], 1)
  if kind == _CONV:
    return (s[2], s[1], s[0])
  if kind == _CONVT:
    return (s[1], s[2], s[0])
  return s


# --------------------------------------------------------------------------------- helpers


def _get(state: Mapping[str, Any], key: str, ndim: int) -> np.ndarray:
  if key not in state:
    raise ValueError(f"key {key!r} is missing")
  x = np.asarray(state[key])
  if x.ndim != ndim:
    raise ValueError(f"key {key!r} has shape {tuple(x.shape)}, expected {ndim} dims")
  return x


def _count(state: Mapping[str, Any], prefix: str, minimum: int = 1) -> int:
  """How many consecutive indices N have keys `prefix + "N."` (0..N-1, none skipped)."""
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
  n = max(found) + 1 if found else 0
  gaps = sorted(set(range(max(n, minimum))) - found)
  if gaps:
    raise ValueError(f"key {prefix}{gaps[0]}.* is missing (found indices {sorted(found)})")
  return n


def _stats(state: Mapping[str, Any]) -> tuple[float, float]:
  values = []
  for key in STAT_KEYS:
    if key not in state:
      raise ValueError(f"key {key!r} is missing (the 0-d token-statistics buffer)")
    x = np.asarray(state[key])
    if x.shape != ():
      raise ValueError(f"key {key!r} has shape {tuple(x.shape)}, expected ()")
    values.append(float(x))
  _check_stats(*values, what="key")
  return values[0], values[1]


def _check_stats(mean: float, std: float, what: str) -> None:
  if not math.isfinite(mean):
    raise ValueError(f"{what} 'mean' is {mean}, expected a finite number")
  if not (math.isfinite(std) and std > 0):
    raise ValueError(f"{what} 'std' is {std}, expected a positive finite number")


def _flatten(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (str(k),)))
    else:
      out[prefix + (str(k),)] = v
  return out


def _set(tree: dict, path: Path, value: Any) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def expected_param_shapes(model: text_to_tokens.TextToTokens) -> dict[Path, tuple[int, ...]]:
  """{Flax path: shape} of every leaf `text_to_tokens.init_params` creates (traced, not run)."""
  tree = jax.eval_shape(
      lambda: text_to_tokens.init_params(model, jax.random.PRNGKey(0), 8, 16))
  return {p: tuple(int(d) for d in v.shape) for p, v in _flatten(tree).items()}


def _layout_of_model(model: text_to_tokens.TextToTokens) -> _Layout:
  return _Layout(model.prenet_layers, model.enc_layers, len(model.dec_channels),
                 model.dec_blocks, model.dec_mid_blocks)


def _layout_of_params(flat: Mapping[Path, Any]) -> _Layout:
  def count(parent: Path, pattern: str) -> int:
    rx = re.compile(pattern)
    idx = {int(m.group(1)) for p in flat if p[:len(parent)] == parent and len(p) > len(parent)
           and (m := rx.fullmatch(p[len(parent)]))}
    return max(idx) + 1 if idx else 0
  est = ("estimator",)
  return _Layout(count(("text_encoder", "prenet"), r"Conv_(\d+)"),
                 count(("text_encoder", "encoder"), r"attn_(\d+)"),
                 count(est, r"down(\d+)_res"), count(est, r"down0_tf(\d+)"),
                 count(est, r"mid(\d+)_res"))


def _fmt(path: Path) -> str:
  return "/".join(path)


# ------------------------------------------------------------------------------ public API


def model_config_from_official(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The `TextToTokens` model config of an official state dict.

  Widths, layer counts, kernel sizes and decoder channels come from the tensor shapes; head
  counts, dropouts and sigma_min are the official values (`OFFICIAL_FIXED`); `token_mean` and
  `token_std` are the file's `mean` / `std` buffers.

  Args:
    state_dict: {official key: array}, e.g. from `core.torch_reader.read_torch_state_dict`.

  Returns:
    A dict with every field of configs/text_to_tokens.py's `model_config`
    (`dec_channels` a tuple), ready for `text_to_tokens.make_model`.

  Raises:
    ValueError: one line naming a key that is missing or of the wrong rank.
  """
  s = state_dict
  n_vocab, channels = _get(s, ENC + "emb.weight", 2).shape
  heads = OFFICIAL_FIXED["enc_heads"]
  if channels % heads or (channels // heads) % 4:
    raise ValueError(f"key {ENC + 'emb.weight'!r}: width {channels} does not split into "
                     f"{heads} heads with a head dim divisible by 4 (RoPE on half of it)")
  prenet = _get(s, ENC + "prenet.conv_layers.0.weight", 3)
  ffn = _get(s, ENC + "encoder.ffn_layers.0.conv_1.weight", 3)
  dp = _get(s, ENC + "proj_w.conv_1.weight", 3)
  levels = _count(s, DEC + "down_blocks.")
  dec_channels = tuple(
      int(_get(s, f"{DEC}down_blocks.{i}.0.block1.block.0.weight", 3).shape[0])
      for i in range(levels))
  dec_blocks = _count(s, DEC + "down_blocks.0.1.", minimum=0)
  head_dim = text_to_tokens.TextToTokens.dec_head_dim  # irrelevant without transformer blocks.
  if dec_blocks:
    key = DEC + "down_blocks.0.1.0.attn1.to_q.weight"
    inner = int(_get(s, key, 2).shape[0])
    if inner % OFFICIAL_FIXED["dec_heads"]:
      raise ValueError(f"key {key!r}: {inner} rows do not split into "
                       f"{OFFICIAL_FIXED['dec_heads']} heads")
    head_dim = inner // OFFICIAL_FIXED["dec_heads"]
  token_mean, token_std = _stats(s)
  return {
      "n_vocab": int(n_vocab),
      "n_feats": int(_get(s, ENC + "proj_m.weight", 3).shape[0]),
      "enc_channels": int(channels),
      "enc_filters": int(ffn.shape[0]),
      "enc_heads": OFFICIAL_FIXED["enc_heads"],
      "enc_layers": _count(s, ENC + "encoder.attn_layers."),
      "enc_kernel": int(ffn.shape[2]),
      "enc_dropout": OFFICIAL_FIXED["enc_dropout"],
      "prenet_kernel": int(prenet.shape[2]),
      "prenet_layers": _count(s, ENC + "prenet.conv_layers."),
      "prenet_dropout": OFFICIAL_FIXED["prenet_dropout"],
      "dp_filters": int(dp.shape[0]),
      "dp_kernel": int(dp.shape[2]),
      "dp_dropout": OFFICIAL_FIXED["dp_dropout"],
      "dec_channels": dec_channels,
      "dec_heads": OFFICIAL_FIXED["dec_heads"],
      "dec_head_dim": int(head_dim),
      "dec_dropout": OFFICIAL_FIXED["dec_dropout"],
      "dec_blocks": dec_blocks,
      "dec_mid_blocks": _count(s, DEC + "mid_blocks.", minimum=0),
      "sigma_min": OFFICIAL_FIXED["sigma_min"],
      "token_mean": token_mean,
      "token_std": token_std,
  }


def params_from_official(state_dict: Mapping[str, Any],
                         model_config: Any) -> tuple[dict, float, float]:
  """Official state dict -> (`TextToTokens` params, token_mean, token_std).

  Args:
    state_dict: {official key: array} (float32 as the reader returns it).
    model_config: the model block (e.g. `model_config_from_official(state_dict)`) or a whole
      config with `.model`; it decides which keys must exist and their shapes, checked against
      the tree `text_to_tokens.init_params` builds for it (same leaves, same shapes).

  Returns:
    (params: nested dict of float32 numpy arrays, token_mean, token_std from the `mean` /
    `std` buffers).

  Raises:
    ValueError: one line naming the first key that is missing, unknown or of the wrong shape
      (expected vs found), or a token statistic that is not finite (std not positive).
  """
  model = text_to_tokens.make_model(model_config)
  expected = expected_param_shapes(model)
  entries = list(_entries(_layout_of_model(model)))
  mapped = {path for path, _, _ in entries}
  # The table and the module must agree leaf for leaf, so nothing is left at its init value.
  for path in sorted(set(expected) - mapped):
    raise ValueError(f"parameter {_fmt(path)} of TextToTokens has no official key")
  for path in sorted(mapped - set(expected)):
    raise ValueError(f"parameter {_fmt(path)} is not in TextToTokens for this config")
  token_mean, token_std = _stats(state_dict)
  params: dict = {}
  for path, key, kind in entries:
    if key not in state_dict:
      raise ValueError(f"key {key!r} is missing")
    x = np.asarray(state_dict[key])
    want = _official_shape(expected[path], kind)
    if tuple(x.shape) != want:
      raise ValueError(f"key {key!r} has shape {tuple(x.shape)}, expected {want}")
    if not np.issubdtype(x.dtype, np.floating):
      raise ValueError(f"key {key!r} has dtype {x.dtype}, expected a float tensor")
    _set(params, path, _to_flax(x, kind))
  extra = sorted(set(state_dict) - {key for _, key, _ in entries} - set(STAT_KEYS))
  if extra:
    raise ValueError(f"key {extra[0]!r} is not part of the official text-to-tokens model "
                     f"({len(extra)} unknown keys)")
  return params, token_mean, token_std


def official_from_params(params: Mapping[str, Any], token_mean: float,
                         token_std: float) -> dict[str, np.ndarray]:
  """`TextToTokens` params -> the official state dict, in the official key order.

  The inverse of `params_from_official`: the same key set (`mean` and `std` as 0-d float32
  buffers first), so `core.torch_writer.write_torch_checkpoint` can write a file the official
  `model.load_state_dict` accepts strictly.

  Args:
    params: the parameter tree (nested dicts / FrozenDicts of arrays).
    token_mean, token_std: the run's token statistics (model config `token_mean/token_std`).

  Raises:
    ValueError: one line naming a Flax parameter that is missing, unknown or of the wrong
      rank, or a statistic that is not finite (std not positive).
  """
  token_mean, token_std = float(token_mean), float(token_std)
  _check_stats(token_mean, token_std, what="token statistic")
  flat = _flatten(params)
  out = {"mean": np.asarray(token_mean, np.float32), "std": np.asarray(token_std, np.float32)}
  entries = list(_entries(_layout_of_params(flat)))
  for path, key, kind in entries:
    if path not in flat:
      raise ValueError(f"parameter {_fmt(path)} is missing (needed for {key!r})")
    x = np.asarray(flat[path], np.float32)
    ndim = _FLAX_NDIM[kind]
    if x.ndim != ndim:
      raise ValueError(f"parameter {_fmt(path)} has shape {tuple(x.shape)}, expected {ndim} "
                       "dims")
    out[key] = _to_official(x, kind)
  extra = sorted(set(flat) - {path for path, _, _ in entries})
  if extra:
    raise ValueError(f"parameter {_fmt(extra[0])} has no official key ({len(extra)} unknown "
                     "parameters)")
  return out
