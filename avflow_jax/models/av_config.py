"""What the AV model is built from, as plain data: stream widths, windows, variants, remat.

No Linen here: `models/dit.py` builds the networks from these, and the config checks, the
loaders and the benchmarks read them without building anything.
"""

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp

# The velocity networks `config.model.variant` selects (see `models/dit.py`): AV-Flow and the
# paper's three ablations (Table 1).
VARIANTS = ("av_flow", "separate", "shared", "cascaded")


def variant_of(model_cfg) -> str:
  """`config.model.variant`, "av_flow" for runs saved before the knob existed."""
  return model_cfg.get("variant", "av_flow")


def token_lookahead(model_cfg) -> int:
  """`config.model.token_lookahead`: frames the token conditioning is read ahead (0 before it)."""
  return int(model_cfg.get("token_lookahead", 0))


def shift_ahead(x, frames: int, lengths=None):
  """(B, T, D) -> the same with frame i holding frame i + `frames`, the last real one held.

  A model conditioned on tokens read ahead anticipates speech by `frames` without any right
  attention window, so it streams with only that look-ahead. `lengths` (B,) marks each row's
  real frames (padding past them is never read); None: all T.
  """
  if not frames:
    return x
  t = x.shape[1]
  last = (jnp.full((x.shape[0],), t) if lengths is None else jnp.asarray(lengths)) - 1
  idx = jnp.minimum(jnp.arange(t)[None, :] + frames, jnp.maximum(last, 0)[:, None])
  return jnp.take_along_axis(x, idx[..., None], axis=1)


REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,  # Recompute the whole block.
    "dots_saveable": jax.checkpoint_policies.dots_saveable,  # Keep matmul outputs.
    "dots_with_no_batch_dims_saveable":
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,  # Keep weight matmuls only.
}
def remat_policy(remat) -> Optional[str]:
  """`config.model.remat` as a `REMAT_POLICIES` name; old configs' booleans are accepted."""
  if isinstance(remat, bool):
    return "full" if remat else "none"
  if remat not in REMAT_POLICIES:
    raise ValueError(f"config.model.remat={remat!r}: must be one of {sorted(REMAT_POLICIES)}")
  return remat


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
