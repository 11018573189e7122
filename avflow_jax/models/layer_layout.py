"""The AV model's two parameter layouts and the converters between them.

Per layer (block_v_{i}, block_a_{i}, fusion_{i}: the official layout) or scanned (one
`SCAN_NAME` entry whose leaves carry a leading layer axis: `model.scan_layers`). Pure tree
functions, applied at the load boundaries (inference loading, init_from, official export).
"""

import jax
import jax.numpy as jnp
import numpy as np

SCAN_NAME = "layers"  # The scanned block pair's parameters: every leaf gains a leading layer axis.

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
