"""The velocity networks cut at their layers, so a stream can compute each layer where it is new.

With windowed attention, layer l's output at frame i depends on layer l - 1 at frames
i - L_l .. i + R_l only; everything else (input projections, time embedding, highway fusion,
output projections) works frame by frame. A stream that keeps every layer's hidden states can
therefore compute a layer for its new frames from L_l + R_l frames of context, instead of
re-running the whole network over ΣL + ΣR frames of context for every chunk
(`inference.layer_cache` does that for the exact stream).

`cut(model)` describes a variant as three pure functions on one (1, W, H) hidden array (the
towers' states side by side):
  embed(params, x, cond)            (1, W, V + A), (1, W, C) -> (1, W, H)
  layer(i, params, h, t, valid)     (1, W, H) -> (1, W, H): layer i, keys >= valid masked
  readout(params, h)                (1, W, H) -> (1, W, V + A) float32 velocity
Applied in order over a whole sequence they compute what `model.apply` computes (to float
rounding; tested). The parameters are the model's own ("av" of a run), in either layout.
"""

import functools
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from avflow_jax.models import av_config
from avflow_jax.models import dit
from avflow_jax.models import layer_layout
from avflow_jax.models import torch_init


class LayerCut(NamedTuple):
  """A velocity network as per-frame input, windowed layers and per-frame output."""
  windows: tuple[tuple[int, int], ...]  # (left, right) of each layer.
  hidden_width: int  # H: the channels of the hidden array.
  embed: Callable
  layer: Callable  # layer(i, params, h, t, valid); i is a Python int.
  readout: Callable


def _linear(m, features, params, x):
  return torch_init.Linear(features, None, m.dtype).apply({"params": params}, x)


def _temb(m, params, t):
  return dit.TimeEmbedding(m.d_model, m.dtype).apply({"params": params}, jnp.reshape(t, (1,)))


def _windows(m) -> tuple[tuple[int, int], ...]:
  windows = av_config.attention_windows(m.windows)
  if any(w is None or min(w) < 0 for w in windows):
    raise ValueError(f"config.model.windows={tuple(m.windows)}: a layer-wise stream needs a "
                     "bounded (left, right) window in every layer")
  return tuple(tuple(int(v) for v in w) for w in windows)


# ---- AV-Flow: two towers and a highway fusion after every block pair --------------------------

@functools.partial(jax.jit, static_argnums=(0,))
def _av_embed(m, params, x, cond):
  cond = cond.astype(m.dtype)
  xv = _linear(m, m.d_model, params["input_proj_v"],
               jnp.concatenate([x[..., :m.visual_dim].astype(m.dtype), cond], -1))
  xa = _linear(m, m.d_model, params["input_proj_a"],
               jnp.concatenate([x[..., m.visual_dim:].astype(m.dtype), cond], -1))
  return jnp.concatenate([xv, xa], -1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _av_layer(m, window, time_params, layer_params, h, t, valid):
  d = m.d_model
  pair = dit.BlockPair(d, m.hidden_dim, m.num_heads, window, m.fusion, m.attention_block,
                       m.dtype, m.attention)
  (xv, xa), _ = pair.apply({"params": layer_params}, (h[..., :d], h[..., d:]),
                           _temb(m, time_params, t), jnp.reshape(valid, (1,)))
  return jnp.concatenate([xv, xa], -1)


@functools.partial(jax.jit, static_argnums=(0,))
def _av_readout(m, params, h):
  d = m.d_model
  out_v = _linear(m, m.visual_dim, params["out_v"], h[..., :d])
  out_a = _linear(m, m.audio_dim, params["out_a"], h[..., d:])
  return jnp.concatenate([out_v, out_a], -1).astype(jnp.float32)


def _av_layer_params(params, i):
  if layer_layout.is_stacked(params):
    return jax.tree.map(lambda x: x[i], params[layer_layout.SCAN_NAME])
  names = ("block_v", "block_a") + (("fusion",) if f"fusion_{i}" in params else ())
  return {name: params[f"{name}_{i}"] for name in names}


def _av_cut(m: dit.AVFlowTransformer) -> LayerCut:
  windows = _windows(m)
  return LayerCut(
      windows, 2 * m.d_model, functools.partial(_av_embed, m),
      lambda i, p, h, t, valid: _av_layer(m, windows[i], p["time_embed"],
                                          _av_layer_params(p, i), h, t, valid),
      functools.partial(_av_readout, m))


# ---- The ablations: towers of DiT blocks, side by side ---------------------------------------

def _towers(m) -> tuple[tuple[str, int, slice], ...]:
  """(parameter name, output width, input channels) of each tower, in the hidden's order."""
  v, a = m.visual_dim, m.audio_dim
  if isinstance(m, dit.SharedTransformer):
    return (("shared", v + a, slice(0, v + a)),)
  return (("visual", v, slice(0, v)), ("audio", a, slice(v, v + a)))


@functools.partial(jax.jit, static_argnums=(0,))
def _tower_embed(m, params, x, cond):
  cond = cond.astype(m.dtype)
  return jnp.concatenate([
      _linear(m, m.d_model, params[name]["input_proj"],
              jnp.concatenate([x[..., cols].astype(m.dtype), cond], -1))
      for name, _, cols in _towers(m)], -1)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _tower_layer(m, window, tower_params, h, t, valid):
  d = m.d_model
  block = dit.DiTBlock(d, m.hidden_dim, m.num_heads, window, m.attention_block, m.dtype,
                       m.attention)
  out = []
  for j, (time_p, block_p) in enumerate(tower_params):
    out.append(block.apply({"params": block_p}, h[..., j * d:(j + 1) * d],
                           _temb(m, time_p, t), jnp.reshape(valid, (1,))))
  return jnp.concatenate(out, -1)


@functools.partial(jax.jit, static_argnums=(0,))
def _tower_readout(m, params, h):
  d = m.d_model
  return jnp.concatenate([
      _linear(m, width, params[name]["out"], h[..., j * d:(j + 1) * d])
      for j, (name, width, _) in enumerate(_towers(m))], -1).astype(jnp.float32)


def _tower_cut(m) -> LayerCut:
  windows = _windows(m)
  names = [name for name, _, _ in _towers(m)]
  return LayerCut(
      windows, len(names) * m.d_model, functools.partial(_tower_embed, m),
      lambda i, p, h, t, valid: _tower_layer(
          m, windows[i], tuple((p[n]["time_embed"], p[n][f"block_{i}"]) for n in names),
          h, t, valid),
      functools.partial(_tower_readout, m))


def cut(model: nn.Module) -> LayerCut:
  """The layer cut of a velocity network (av_flow, separate or shared; remat is ignored).

  Raises:
    ValueError: the cascaded variant (two stages, not one stack of layers) or an unbounded
      window.
  """
  if isinstance(model, dit.AVFlowTransformer):
    return _av_cut(model)
  if isinstance(model, (dit.SeparateTransformer, dit.SharedTransformer)):
    return _tower_cut(model)
  raise ValueError(f"{type(model).__name__}: no layer cut (the cascaded variant samples in two "
                   "stages)")
