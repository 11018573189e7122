"""The official AV-Flow state-dict names of the AV model and the head VAE, both ways.

The official release stores the `AVDiffusionWrapper`'s state dict (every key under
`diffusion_module.`) and the `TransformerEncoderVAE`'s (no prefix); ../shared/spec/
official_checkpoints.md §1-2 lists the keys. Every AV entry is a torch `Linear`: the Flax
kernel is its weight transposed and the bias is shared as is. The fused qkv rows are laid out
per head as [q_h | k_h | v_h] in both implementations, and the adaLN output order is
(alpha, beta, gamma) in both, so nothing is permuted. The VAE's `nn.TransformerEncoderLayer`
packs q, k and v in one `in_proj_weight`; Flax's attention keeps three projections shaped
(in, heads, head_dim).

All functions are pure numpy: a state dict is {official key: array}, a parameter tree the
nested dict Flax uses. A key missing, left over or of the wrong shape raises `ValueError`
with one line naming the key.
"""

import collections
from typing import Any, Iterator, Mapping

import numpy as np

AV_PREFIX = "diffusion_module."
# (Flax path inside one DiT block, official name inside `transformer_blocks_X.i.`).
_BLOCK_LINEARS = (
    (("attn_mod", "adaln"), "self_attn.ada_ln.linear"),
    (("attn", "qkv"), "self_attn.self_attn.qkv"),
    (("attn", "out"), "self_attn.self_attn.project"),
    (("ff_mod", "adaln"), "feedforward.ada_ln.linear"),
    (("ff", "fc1"), "feedforward.block.0"),
    (("ff", "fc2"), "feedforward.block.3"),
)
_VAE_LINEARS = (("enc_in", "encoder.0"), ("fc_mu", "fc_mu"), ("fc_var", "fc_var"),
                ("dec_in", "decoder_input"), ("dec_out", "final_layer"))
_VAE_LAYERS = (("enc_layer", "encoder.1.layers.0."), ("dec_layer", "decoder.0.layers.0."))


def _av_linears(num_layers: int) -> Iterator[tuple[tuple[str, ...], str]]:
  """(Flax path, official name without `.weight`/`.bias`) of every AV Linear, in file order."""
  yield ("time_embed", "fc1"), AV_PREFIX + "time_embed.mlp.0"
  yield ("time_embed", "fc2"), AV_PREFIX + "time_embed.mlp.2"
  yield ("input_proj_v",), AV_PREFIX + "input_proj_v"
  yield ("input_proj_a",), AV_PREFIX + "input_proj_a"
  for tower in ("v", "a"):
    for i in range(num_layers):
      for path, name in _BLOCK_LINEARS:
        yield (f"block_{tower}_{i}",) + path, f"{AV_PREFIX}transformer_blocks_{tower}.{i}.{name}"
  for i in range(num_layers):
    yield (f"fusion_{i}",), f"{AV_PREFIX}fusion.{i}"
  yield ("out_v",), AV_PREFIX + "out_v"
  yield ("out_a",), AV_PREFIX + "out_a"


def _get(state: Mapping[str, np.ndarray], key: str, ndim: int) -> np.ndarray:
  if key not in state:
    raise ValueError(f"key {key!r} is missing")
  x = np.asarray(state[key], np.float32)
  if x.ndim != ndim:
    raise ValueError(f"key {key!r} has shape {x.shape}, expected {ndim} dims")
  return x


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for p in path[:-1]:
    tree = tree.setdefault(p, {})
  tree[path[-1]] = value


def _leftover(state: Mapping[str, Any], used: set, what: str) -> None:
  extra = sorted(set(state) - used)
  if extra:
    raise ValueError(f"key {extra[0]!r} is not part of the official {what} "
                     f"({len(extra)} unknown keys)")


def av_architecture(state: Mapping[str, np.ndarray]) -> dict[str, int]:
  """Widths and depth of an official AV state dict, read off its tensor shapes.

  Returns:
    {"d_model", "hidden_dim", "num_layers", "visual", "audio", "cond"}: `cond` is the
    per-frame conditioning width (29 plain, 116 dyadic).
  """
  w_in_v = _get(state, AV_PREFIX + "input_proj_v.weight", 2)
  w_in_a = _get(state, AV_PREFIX + "input_proj_a.weight", 2)
  visual = _get(state, AV_PREFIX + "out_v.weight", 2).shape[0]
  audio = _get(state, AV_PREFIX + "out_a.weight", 2).shape[0]
  num_layers = 0
  while f"{AV_PREFIX}fusion.{num_layers}.weight" in state:
    num_layers += 1
  if not num_layers:
    raise ValueError(f"key {AV_PREFIX}fusion.0.weight is missing (not an AV-Flow model?)")
  hidden = _get(state, f"{AV_PREFIX}transformer_blocks_v.0.feedforward.block.0.weight", 2)
  return {"d_model": int(w_in_v.shape[0]), "hidden_dim": int(hidden.shape[0]),
          "num_layers": num_layers, "visual": int(visual), "audio": int(audio),
          "cond": int(w_in_v.shape[1] - visual), "cond_audio": int(w_in_a.shape[1] - audio)}


def av_params_from_official(state: Mapping[str, np.ndarray], expected: Mapping[str, Any],
                            consume: bool = False) -> dict:
  """The AVFlowTransformer parameter tree of an official AV state dict.

  Kernels are transposed views of the weights (no copy), so the tree costs no memory of its
  own until its leaves are copied somewhere.

  Args:
    state: {official key: array}, the `model_state_dict` of the official file.
    expected: the parameter tree of the model it must fit (arrays or ShapeDtypeStructs,
      unboxed): every leaf must be produced with this shape, and nothing else.
    consume: pop the keys from `state` (a dict) as they are mapped, so that once the tree's
      leaves are replaced one by one (copied to a device, say) each weight is freed in turn.

  Raises:
    ValueError: one line naming a missing, unknown or wrongly shaped key.
  """
  num_layers = sum(1 for k in expected if k.startswith("fusion_"))
  params, used = {}, set()
  for path, name in _av_linears(num_layers):
    want = _leaf(expected, path)
    kernel = _get(state, name + ".weight", 2).T
    bias = _get(state, name + ".bias", 1)
    _check(name + ".weight", kernel.T.shape, tuple(want["kernel"].shape)[::-1])
    _check(name + ".bias", bias.shape, tuple(want["bias"].shape))
    _set(params, path, {"kernel": kernel, "bias": bias})
    used.update((name + ".weight", name + ".bias"))
  _leftover(state, used, "AV model")
  _same_tree(params, expected)
  if consume:
    for key in used:
      del state[key]
  return params


def official_from_av_params(params: Mapping[str, Any]) -> "collections.OrderedDict[str, np.ndarray]":
  """The official AV state dict (keys in the official module order) of a parameter tree."""
  num_layers = sum(1 for k in params if k.startswith("fusion_"))
  out = collections.OrderedDict()
  for path, name in _av_linears(num_layers):
    leaf = _leaf(params, path)
    out[name + ".weight"] = np.ascontiguousarray(np.asarray(leaf["kernel"], np.float32).T)
    out[name + ".bias"] = np.asarray(leaf["bias"], np.float32)
  return _official_order(out, num_layers)


def _official_order(out: "collections.OrderedDict", num_layers: int):
  """Reorders AV keys as the official module registers them (state_dict order)."""
  order = [AV_PREFIX + "time_embed.mlp.0", AV_PREFIX + "time_embed.mlp.2",
           AV_PREFIX + "input_proj_v", AV_PREFIX + "input_proj_a"]
  for tower in ("v", "a"):
    order += [f"{AV_PREFIX}transformer_blocks_{tower}.{i}.{n}" for i in range(num_layers)
              for _, n in _BLOCK_LINEARS]
  order += [f"{AV_PREFIX}fusion.{i}" for i in range(num_layers)]
  order += [AV_PREFIX + "out_v", AV_PREFIX + "out_a"]
  return collections.OrderedDict((f"{n}.{s}", out[f"{n}.{s}"]) for n in order
                                 for s in ("weight", "bias"))


def head_vae_architecture(state: Mapping[str, np.ndarray]) -> dict[str, int]:
  """{"input_dim", "latent_dim", "hidden", "ff_dim"} of an official head-VAE state dict."""
  enc = _get(state, "encoder.0.weight", 2)
  mu = _get(state, "fc_mu.weight", 2)
  ff = _get(state, "encoder.1.layers.0.linear1.weight", 2)
  return {"input_dim": int(enc.shape[1]), "latent_dim": int(mu.shape[0]),
          "hidden": int(enc.shape[0]), "ff_dim": int(ff.shape[0])}


def head_vae_params_from_official(state: Mapping[str, np.ndarray], num_heads: int = 1,
                                  expected: Mapping[str, Any] | None = None) -> dict:
  """The HeadVAE parameter tree of an official head-VAE state dict.

  Args:
    state: {official key: array} (the file's `model_state_dict`, or the file itself).
    num_heads: attention heads (the official VAE has 1; heads are not visible in the shapes).
    expected: optional parameter tree (e.g. from `HeadVAE.init`) every leaf must match.

  Raises:
    ValueError: one line naming a missing, unknown or wrongly shaped key.
  """
  params, used = {}, set()
  for ours, name in _VAE_LINEARS:
    params[ours] = {"kernel": np.ascontiguousarray(_get(state, name + ".weight", 2).T),
                    "bias": _get(state, name + ".bias", 1)}
    used.update((name + ".weight", name + ".bias"))
  for ours, pre in _VAE_LAYERS:
    w_in = _get(state, pre + "self_attn.in_proj_weight", 2)
    b_in = _get(state, pre + "self_attn.in_proj_bias", 1)
    d = w_in.shape[1]
    if w_in.shape != (3 * d, d) or b_in.shape != (3 * d,) or d % num_heads:
      raise ValueError(f"key {pre}self_attn.in_proj_weight has shape {w_in.shape}, expected "
                       f"(3 x {d}, {d}) split over {num_heads} heads")
    hd = d // num_heads
    attn = {}
    for j, part in enumerate(("query", "key", "value")):
      w = w_in[j * d:(j + 1) * d]
      attn[part] = {"kernel": np.ascontiguousarray(w.T.reshape(d, num_heads, hd)),
                    "bias": b_in[j * d:(j + 1) * d].reshape(num_heads, hd)}
    w_out = _get(state, pre + "self_attn.out_proj.weight", 2)
    attn["out"] = {"kernel": np.ascontiguousarray(w_out.T.reshape(num_heads, hd, d)),
                   "bias": _get(state, pre + "self_attn.out_proj.bias", 1)}
    layer = {"attn": attn}
    for flax_name, name in (("ff1", "linear1"), ("ff2", "linear2")):
      layer[flax_name] = {"kernel": np.ascontiguousarray(_get(state, f"{pre}{name}.weight", 2).T),
                          "bias": _get(state, f"{pre}{name}.bias", 1)}
    for norm in ("norm1", "norm2"):
      layer[norm] = {"scale": _get(state, f"{pre}{norm}.weight", 1),
                     "bias": _get(state, f"{pre}{norm}.bias", 1)}
    params[ours] = layer
    used.update(f"{pre}{n}" for n in (
        "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
        "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight",
        "linear2.bias", "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias"))
  _leftover(state, used, "head VAE")
  if expected is not None:
    _same_tree(params, expected, shapes_of_official=True)
  return params


def official_from_head_vae_params(params: Mapping[str, Any]
                                  ) -> "collections.OrderedDict[str, np.ndarray]":
  """The official head-VAE state dict (official key order) of a HeadVAE parameter tree."""
  f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
  out = collections.OrderedDict()
  layers = dict(_VAE_LAYERS)

  def linear(name, leaf):
    out[name + ".weight"] = f32(np.asarray(leaf["kernel"]).T)
    out[name + ".bias"] = f32(leaf["bias"])

  def layer(pre, p):
    attn = p["attn"]
    d = np.asarray(attn["query"]["kernel"]).shape[0]
    out[pre + "self_attn.in_proj_weight"] = f32(np.concatenate(
        [np.asarray(attn[k]["kernel"]).reshape(d, d).T for k in ("query", "key", "value")]))
    out[pre + "self_attn.in_proj_bias"] = f32(np.concatenate(
        [np.asarray(attn[k]["bias"]).reshape(d) for k in ("query", "key", "value")]))
    out[pre + "self_attn.out_proj.weight"] = f32(np.asarray(attn["out"]["kernel"]).reshape(d, d).T)
    out[pre + "self_attn.out_proj.bias"] = f32(attn["out"]["bias"])
    linear(pre + "linear1", p["ff1"])
    linear(pre + "linear2", p["ff2"])
    for norm in ("norm1", "norm2"):
      out[f"{pre}{norm}.weight"] = f32(p[norm]["scale"])
      out[f"{pre}{norm}.bias"] = f32(p[norm]["bias"])

  # The official module registers encoder.0, encoder.1, fc_mu, fc_var, decoder_input,
  # decoder.0, final_layer, in that order.
  linear("encoder.0", params["enc_in"])
  layer(layers["enc_layer"], params["enc_layer"])
  linear("fc_mu", params["fc_mu"])
  linear("fc_var", params["fc_var"])
  linear("decoder_input", params["dec_in"])
  layer(layers["dec_layer"], params["dec_layer"])
  linear("final_layer", params["dec_out"])
  return out


def _leaf(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for p in path:
    if p not in tree:
      raise ValueError(f"the model has no parameter {'/'.join(path)}")
    tree = tree[p]
  return tree


def _check(key: str, got, want) -> None:
  if tuple(got) != tuple(want):
    raise ValueError(f"key {key!r} has shape {tuple(got)}, the model expects {tuple(want)}")


def _flat(tree, prefix=()) -> dict:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, prefix + (k,)))
    return out
  return {prefix: tuple(np.shape(tree)) if not hasattr(tree, "shape") else tuple(tree.shape)}


def _same_tree(params, expected, shapes_of_official: bool = False) -> None:
  """Every leaf of `expected` was produced, with its shape, and nothing else."""
  got, want = _flat(params), _flat(expected)
  for path in sorted(set(want) - set(got)):
    raise ValueError(f"no official key gives parameter {'/'.join(path)}")
  for path in sorted(set(got) - set(want)):
    raise ValueError(f"parameter {'/'.join(path)} is not in the model")
  for path, shape in want.items():
    if got[path] != shape:
      what = "the file's" if shapes_of_official else "mapped"
      raise ValueError(f"parameter {'/'.join(path)}: {what} shape {got[path]}, the model "
                       f"expects {shape}")
