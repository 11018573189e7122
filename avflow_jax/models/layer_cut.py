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
  layer(i, lp, h, t, valid, q0, n)  (1, W, H) -> (1, n, H): layer i at frames q0 .. q0 + n of
                                    the window (keys: all W frames, those >= valid masked);
                                    lp = layer_params(params, i), taken once per stream
  readout(params, h)                (1, W, H) -> (1, W, V + A) float32 velocity
Applied in order over a whole sequence they compute what `model.apply` computes (to float
rounding; tested). A layer computes only its n query frames past the attention's key and
value projections: a stream's context frames (L + R per layer) cost a projection, not a whole
block. The parameters are the model's own ("av" of a run), in either layout.
"""

import functools
from typing import Callable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from avflow_jax.models import attention
from avflow_jax.models import av_config
from avflow_jax.models import dit
from avflow_jax.models import layer_layout
from avflow_jax.models import torch_init


class LayerCut(NamedTuple):
  """A velocity network as per-frame input, windowed layers and per-frame output."""
  windows: tuple[tuple[int, int], ...]  # (left, right) of each layer.
  hidden_width: int  # H: the channels of the hidden array.
  embed: Callable
  layer_params: Callable  # layer_params(params, i): what layer i reads of the parameters.
  layer: Callable  # layer(i, layer_params, h, t, valid, q0, n); i and n are Python ints.
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


def _block_queries(m, window, params, x, temb, valid, q0, n):
  """`dit.DiTBlock` at frames q0 .. q0 + n of the (1, W, d) window x, every frame a key.

  The block's own sublayers on its own parameters; only the attention's queries (and so its
  output projection, the feed-forward and the residuals) are restricted to the n frames, so
  the context frames cost the key and value projections alone. Keys at or past `valid` are
  masked (the whole model's `lengths`).
  """
  d, heads = m.d_model, m.num_heads
  w = x.shape[1]
  sublayer = dit.AdaLNSublayer(d, m.dtype)

  def attend(y):  # As `dit.WindowedAttention`, for the n query frames.
    qkv = _linear(m, 3 * d, params["attn"]["qkv"], y).reshape(1, w, heads, 3 * d // heads)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    pos = jnp.arange(w)
    q = jax.lax.dynamic_slice_in_dim(attention.rotary_embedding(q, pos), q0, n, axis=1)
    out = attention.dense_attention(q, attention.rotary_embedding(k, pos), v, window=window,
                                    lengths=jnp.reshape(valid, (1,)), query_offset=q0)
    return _linear(m, d, params["attn"]["out"], out.reshape(1, n, d))

  x = sublayer.apply({"params": params["attn_mod"]}, x, temb, attend,
                     residual=jax.lax.dynamic_slice_in_dim(x, q0, n, axis=1))
  ff = dit.FeedForward(d, m.hidden_dim, m.dtype)
  return sublayer.apply({"params": params["ff_mod"]}, x, temb,
                        lambda y: ff.apply({"params": params["ff"]}, y))


# ---- AV-Flow: two towers and a highway fusion after every block pair --------------------------

@functools.partial(jax.jit, static_argnums=(0,))
def _av_embed(m, params, x, cond):
  cond = cond.astype(m.dtype)
  xv = _linear(m, m.d_model, params["input_proj_v"],
               jnp.concatenate([x[..., :m.visual_dim].astype(m.dtype), cond], -1))
  xa = _linear(m, m.d_model, params["input_proj_a"],
               jnp.concatenate([x[..., m.visual_dim:].astype(m.dtype), cond], -1))
  return jnp.concatenate([xv, xa], -1)


@functools.partial(jax.jit, static_argnums=(0, 1, 6))
def _av_layer(m, window, time_params, layer_params, h, t, n, valid, q0):
  d = m.d_model
  temb = _temb(m, time_params, t)
  xv = _block_queries(m, window, layer_params["block_v"], h[..., :d], temb, valid, q0, n)
  xa = _block_queries(m, window, layer_params["block_a"], h[..., d:], temb, valid, q0, n)
  if "fusion" in layer_params:  # Per frame, audio first as in `dit._layer`.
    y = _linear(m, 2 * d, layer_params["fusion"], jnp.concatenate([xa, xv], -1))
    xa, xv = xa + y[..., :d], xv + y[..., d:]
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
      lambda p, i: (p["time_embed"], _av_layer_params(p, i)),
      lambda i, lp, h, t, valid, q0, n: _av_layer(m, windows[i], *lp, h, t, n, valid, q0),
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


@functools.partial(jax.jit, static_argnums=(0, 1, 5))
def _tower_layer(m, window, tower_params, h, t, n, valid, q0):
  d = m.d_model
  return jnp.concatenate([
      _block_queries(m, window, block_p, h[..., j * d:(j + 1) * d], _temb(m, time_p, t), valid,
                     q0, n)
      for j, (time_p, block_p) in enumerate(tower_params)], -1)


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
      lambda p, i: tuple((p[k]["time_embed"], p[k][f"block_{i}"]) for k in names),
      lambda i, lp, h, t, valid, q0, n: _tower_layer(m, windows[i], lp, h, t, n, valid, q0),
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
