"""The AV-Flow network: two windowed diffusion transformers joined by linear highway fusion.

Layout follows the official implementation (see ../shared/spec/av_flow_reference.md §1):
per-frame conditioning is concatenated to each tower's noisy input, a shared Fourier time
embedding drives adaLN-zero modulation in every sublayer, and after every block pair a single
Linear(2d, 2d) over [audio ; visual] is split and added back to both towers.
"""

import dataclasses
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avflow_jax.models import attention
from avflow_jax.models import torch_init

Dtype = Any


def dense(features, logical_axes, name, dtype, kernel_init=None, zero_bias=False):
  """A Linear layer with torch's default init whose kernel carries logical axis names."""
  return torch_init.Linear(features, logical_axes, dtype, kernel_init, zero_bias, name=name)


def _adaln_kernel_init(d_model):
  """adaLN-zero: the alpha (gate) columns start at zero so each sublayer starts as identity.

  The other columns (beta, gamma) keep torch's default init, as in the official model.
  """
  def init(key, shape, dtype=jnp.float32):
    w = torch_init.kernel_init(key, shape, dtype)
    return w.at[:, :d_model].set(0.0)
  return init


class TimeEmbedding(nn.Module):
  """Fourier features of t in [0, 1] (not scaled by 1000) followed by an MLP."""
  d_model: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t):
    n = self.d_model // 8
    freqs = np.exp(-np.arange(n) * np.log(10_000.0) / (n - 1)).astype(np.float32)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    emb = dense(self.d_model, ("time", "embed"), "fc1", self.dtype)(emb)
    emb = nn.gelu(emb, approximate=False)
    return dense(self.d_model, ("embed", "time"), "fc2", self.dtype)(emb)


class AdaLNSublayer(nn.Module):
  """x + alpha(t) * f(LayerNorm(x) * (1 + gamma(t)) + beta(t)) with adaLN-zero init."""
  d_model: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, temb, f):
    mod = dense(3 * self.d_model, ("embed", "mod"), "adaln", self.dtype,
                kernel_init=_adaln_kernel_init(self.d_model), zero_bias=True)(temb)
    alpha, beta, gamma = jnp.split(mod[:, None, :], 3, axis=-1)
    # Normalise in float32: bf16 variance of 512 features loses too much.
    y = nn.LayerNorm(epsilon=1e-6, use_bias=False, use_scale=False, dtype=jnp.float32)(x)
    y = (y * (1 + gamma) + beta).astype(self.dtype)
    return x + alpha * f(y)


class WindowedAttention(nn.Module):
  """Multi-head self-attention with rotary q/k and a (left, right) frame window."""
  d_model: int
  num_heads: int
  window: Optional[tuple[int, int]]
  block: int = 64
  dtype: Dtype = jnp.float32
  implementation: str = "blocked"

  @nn.compact
  def __call__(self, x, lengths=None):
    b, t, _ = x.shape
    hd = self.d_model // self.num_heads
    qkv = dense(3 * self.d_model, ("embed", "qkv"), "qkv", self.dtype)(x)
    # The fused weight is laid out per head as [q_h | k_h | v_h], as in the official layer.
    qkv = qkv.reshape(b, t, self.num_heads, 3 * hd)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    pos = jnp.arange(t)
    q = attention.rotary_embedding(q, pos)
    k = attention.rotary_embedding(k, pos)
    out = attention.windowed_attention(q, k, v, window=self.window, lengths=lengths,
                                       block=self.block, implementation=self.implementation)
    out = out.reshape(b, t, self.d_model)
    return dense(self.d_model, ("qkv", "embed"), "out", self.dtype)(out)


class FeedForward(nn.Module):
  d_model: int
  hidden_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = dense(self.hidden_dim, ("embed", "mlp"), "fc1", self.dtype)(x)
    h = nn.gelu(h, approximate=False)
    return dense(self.d_model, ("mlp", "embed"), "fc2", self.dtype)(h)


class DiTBlock(nn.Module):
  """Windowed self-attention sublayer then feed-forward sublayer, each adaLN-zero modulated."""
  d_model: int
  hidden_dim: int
  num_heads: int
  window: Optional[tuple[int, int]]
  block: int = 64
  dtype: Dtype = jnp.float32
  implementation: str = "blocked"

  @nn.compact
  def __call__(self, x, temb, lengths=None):
    attn = WindowedAttention(self.d_model, self.num_heads, self.window, self.block,
                             self.dtype, self.implementation, name="attn")
    x = AdaLNSublayer(self.d_model, self.dtype, name="attn_mod")(
        x, temb, lambda y: attn(y, lengths))
    ff = FeedForward(self.d_model, self.hidden_dim, self.dtype, name="ff")
    return AdaLNSublayer(self.d_model, self.dtype, name="ff_mod")(x, temb, ff)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # Recompute the whole block.
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # Keep matmul outputs.
    "dots_with_no_batch_dims_saveable":
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # Keep weight matmuls only.
}
SCAN_NAME = "layers"  # The scanned block pair's parameters: every leaf gains a leading layer axis.


def remat_policy(remat) -> Optional[str]:
  """`config.model.remat` as a `REMAT_POLICIES` name; old configs' booleans are accepted."""
  if isinstance(remat, bool):
    return "full" if remat else "none"
  if remat not in REMAT_POLICIES:
    raise ValueError(f"config.model.remat={remat!r}: must be one of {sorted(REMAT_POLICIES)}")
  return remat


def _layer(xv, xa, temb, lengths, *, suffix: str, d_model, hidden_dim, num_heads, window,
           fusion, block, dtype, implementation, remat):
  """Layer `suffix` of both towers and its highway fusion, created in the calling module."""
  block_cls = DiTBlock
  if remat != "none":
    block_cls = nn.remat(DiTBlock, policy=REMAT_POLICIES[remat])
  kw = dict(d_model=d_model, hidden_dim=hidden_dim, num_heads=num_heads, window=window,
            block=block, dtype=dtype, implementation=implementation)
  xv = block_cls(**kw, name=f"block_v{suffix}")(xv, temb, lengths)
  xa = block_cls(**kw, name=f"block_a{suffix}")(xa, temb, lengths)
  if fusion:
    # Highway fusion: audio first in the concat, as in the official model.
    y = dense(2 * d_model, ("embed", "fusion"), f"fusion{suffix}", dtype)(
        jnp.concatenate([xa, xv], -1))
    xa = xa + y[..., :d_model]
    xv = xv + y[..., d_model:]
  return xv, xa


class BlockPair(nn.Module):
  """One layer of both towers and its fusion: the unit `scan_layers` repeats (params
  block_v, block_a, fusion; the unrolled model names them block_v_{i}, ...)."""
  d_model: int
  hidden_dim: int
  num_heads: int
  window: Optional[tuple[int, int]]
  fusion: bool = True
  block: int = 64
  dtype: Dtype = jnp.float32
  implementation: str = "blocked"
  remat: str = "none"

  @nn.compact
  def __call__(self, carry, temb, lengths=None):
    xv, xa = _layer(*carry, temb, lengths, suffix="", d_model=self.d_model,
                    hidden_dim=self.hidden_dim, num_heads=self.num_heads, window=self.window,
                    fusion=self.fusion, block=self.block, dtype=self.dtype,
                    implementation=self.implementation, remat=self.remat)
    return (xv, xa), None


class AVFlowTransformer(nn.Module):
  """Joint audio-visual velocity network.

  Attributes:
    visual_dim: face code dims + head latent dims (256 + 8).
    audio_dim: mel bands (80).
    d_model, hidden_dim, num_heads: tower width, feed-forward width, heads.
    windows: one (left, right) per layer; None means unbounded, a negative side is unbounded
      on that side only.
    fusion: whether the highway fusion layers are used (the ablation switches it off).
    attention_block: query block size of the blocked windowed attention.
    remat: a `REMAT_POLICIES` name (or a bool: full / none).
    dtype: compute dtype; parameters are always float32 (LayerNorm, softmax and the outputs
      are computed in float32 whatever it is).
    attention: one of `attention.IMPLEMENTATIONS` (resolve "auto" with
      `attention.resolve_implementation` first).
    scan_layers: run one `BlockPair` under `nn.scan` instead of unrolling the layers (one
      compiled layer; needs the same window for every layer). Its parameters are stacked
      under "layers"; `stack_layers` / `unstack_layers` convert between the layouts.
  """
  visual_dim: int = 264
  audio_dim: int = 80
  d_model: int = 512
  hidden_dim: int = 1024
  num_heads: int = 4
  windows: Sequence[Optional[tuple[int, int]]] = ((16, 8),) * 8
  fusion: bool = True
  attention_block: int = 64
  remat: Any = "none"
  dtype: Dtype = jnp.float32
  attention: str = "blocked"
  scan_layers: bool = False

  @nn.compact
  def __call__(self, x_visual, x_audio, cond, t, lengths=None):
    """Predicts the flow velocity.

    Args:
      x_visual: (B, T, visual_dim) noisy visual signal.
      x_audio: (B, T, audio_dim) noisy mel.
      cond: (B, T, C) per-frame conditioning (tokens; participant features).
      t: (B,) flow time in [0, 1].
      lengths: optional (B,) valid frames per sequence (keys beyond are masked).

    Returns:
      (velocity_visual (B, T, visual_dim), velocity_audio (B, T, audio_dim)), float32.
    """
    d = self.d_model
    cond = cond.astype(self.dtype)
    xv = dense(d, ("input", "embed"), "input_proj_v", self.dtype)(
        jnp.concatenate([x_visual.astype(self.dtype), cond], -1))
    xa = dense(d, ("input", "embed"), "input_proj_a", self.dtype)(
        jnp.concatenate([x_audio.astype(self.dtype), cond], -1))
    temb = TimeEmbedding(d, self.dtype, name="time_embed")(t)
    windows = list(attention_windows(self.windows))
    kw = dict(d_model=d, hidden_dim=self.hidden_dim, num_heads=self.num_heads,
              fusion=self.fusion, block=self.attention_block, dtype=self.dtype,
              implementation=self.attention, remat=remat_policy(self.remat))
    # The scanned pair's remat applies per block inside the scan, as in the unrolled model.
    if self.scan_layers:
      if len(set(windows)) > 1:
        raise ValueError(f"config.model.scan_layers: needs one window for every layer, got "
                         f"{windows}")
      scanned = nn.scan(BlockPair, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(nn.broadcast, nn.broadcast), length=len(windows),
                        metadata_params={nn.PARTITION_NAME: SCAN_NAME})
      (xv, xa), _ = scanned(window=windows[0], **kw, name=SCAN_NAME)((xv, xa), temb, lengths)
    else:
      for i, window in enumerate(windows):
        xv, xa = _layer(xv, xa, temb, lengths, suffix=f"_{i}", window=window, **kw)
    out_v = dense(self.visual_dim, ("embed", "output"), "out_v", self.dtype)(xv)
    out_a = dense(self.audio_dim, ("embed", "output"), "out_a", self.dtype)(xa)
    return out_v.astype(jnp.float32), out_a.astype(jnp.float32)


def attention_windows(windows) -> tuple[Optional[tuple[int, int]], ...]:
  """Per-layer (left, right) pairs as the attention takes them: None = unbounded both ways."""
  return tuple(None if w is None or max(w) < 0 else tuple(w) for w in windows)


def layer_windows(windows, num_layers: int) -> tuple[tuple[int, int], ...]:
  """`config.model.windows` as one (left, right) pair per layer.

  A single pair means the same window for every layer; a list gives one pair per layer.
  Sizes are integers >= 0, or -1 for an unbounded side.

  Raises:
    ValueError: naming `config.model.windows` and what is wrong with it.
  """
  windows = list(windows)
  if windows and not isinstance(windows[0], (list, tuple)):
    windows = [windows] * num_layers
  if len(windows) != num_layers:
    raise ValueError(f"config.model.windows: {len(windows)} pairs for {num_layers} layers "
                     "(give one (left, right) pair, or one per layer)")
  out = []
  for w in windows:
    if len(w) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in w):
      raise ValueError(f"config.model.windows: {tuple(w)} is not a (left, right) pair of "
                       "integers")
    if any(v < -1 for v in w):
      raise ValueError(f"config.model.windows: {tuple(w)}: use sizes >= 0, or -1 for an "
                       "unbounded side")
    out.append((int(w[0]), int(w[1])))
  return tuple(out)


@dataclasses.dataclass(frozen=True)
class AVDims:
  """Widths of the AV model's streams, derived from the data's dims and the head VAE.

  Attributes:
    face: face-code width.
    head_latent: the head VAE's latent width.
    audio: mel bands (the audio tower's input and output).
    cond: per-frame conditioning (tokens, plus the participant's features when dyadic).
    participant: the participant's features at the end of `cond` (0 when not dyadic).
  """
  face: int
  head_latent: int
  audio: int
  cond: int
  participant: int = 0

  @property
  def visual(self) -> int:
    """The visual tower's input and output: [face codes ; head latent]."""
    return self.face + self.head_latent

  @classmethod
  def from_data(cls, dims: dict, head_latent: int, participant: bool) -> "AVDims":
    """From a manifest's `dims`; `participant` adds their features to the conditioning."""
    p = dims.get("participant", 0) if participant else 0
    return cls(face=dims["face"], head_latent=head_latent, audio=dims["mel"],
               cond=dims["tokens"] + p, participant=p)


_PER_LAYER = ("block_v", "block_a", "fusion")


def is_stacked(params) -> bool:
  """Whether AV params are in the scanned layout (one "layers" entry of stacked leaves)."""
  return SCAN_NAME in params


def stack_layers(params: dict) -> dict:
  """Per-layer AV params (block_v_{i}, block_a_{i}, fusion_{i}) -> the `scan_layers` layout.

  Works on host (numpy) or device trees; other entries are kept. Inverse: `unstack_layers`.
  """
  n = sum(1 for k in params if k.startswith("block_v_"))
  xp = np if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(params)) else jnp
  out = {k: v for k, v in params.items()
         if not any(k == f"{name}_{i}" for name in _PER_LAYER for i in range(n))}
  out[SCAN_NAME] = {name: jax.tree.map(lambda *xs: xp.stack(xs),
                                       *[params[f"{name}_{i}"] for i in range(n)])
                    for name in _PER_LAYER if f"{name}_0" in params}
  return out


def unstack_layers(params: dict) -> dict:
  """The `scan_layers` layout -> per-layer AV params; inverse of `stack_layers`."""
  out = {k: v for k, v in params.items() if k != SCAN_NAME}
  stacked = params[SCAN_NAME]
  n = jax.tree.leaves(stacked)[0].shape[0]
  for name, tree in stacked.items():
    for i in range(n):
      out[f"{name}_{i}"] = jax.tree.map(lambda x, i=i: x[i], tree)
  return out


def to_layout(params: dict, scan_layers: bool) -> dict:
  """AV params (or a tree shaped like them, e.g. Adam moments) in the layout a model uses."""
  if scan_layers and not is_stacked(params):
    return stack_layers(params)
  if not scan_layers and is_stacked(params):
    return unstack_layers(params)
  return params
