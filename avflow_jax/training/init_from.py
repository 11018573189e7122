"""Starting a run from another run's weights (`config.init`): fine-tuning, imported releases.

A fresh run (no checkpoint in its workdir yet) with `config.init.workdir` set starts at step 0
from that run's weights instead of a random init; the EMA starts equal to them. With
`config.init.adam_moments`, Adam's first and second moments (and its step count, so the bias
correction stays that of a long-trained optimiser) come from its checkpoint too: the official
file's (`import_official --adam-moments`) or the run's own optimiser state. With
`config.init.stats` (the default) the run keeps the statistics its initial weights were trained
with (`data.stats_from`), while `data.dir` supplies the clips.
"""

import os
from typing import Any, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from avflow_jax.core import run_dir
from avflow_jax.models import layer_layout


def _init_dir(config) -> Optional[str]:
  init = config.get("init")
  if init is None or not init.get("workdir"):
    return None
  return os.path.abspath(os.path.expanduser(init.workdir))


def resolve(config):
  """`config` with what the initial run fixes filled in (a copy; unchanged without init).

  With config.init.stats, data.stats_from becomes the initial run's data (its statistics); an
  AV run without head_vae.workdir takes the initial run's head VAE (its latents are what the
  initial weights model).

  Raises:
    ValueError: the initial run has no config.json, or names no data (config.init.workdir).
  """
  init_dir = _init_dir(config)
  if init_dir is None:
    return config
  if not run_dir.has_run_config(init_dir):
    raise ValueError(f"config.init.workdir={init_dir}: no {run_dir.RUN_CONFIG} (not a run "
                     "directory)")
  saved = run_dir.read_run_config(init_dir, "config.init.workdir")
  config = config.copy_and_resolve_references()
  with config.unlocked():
    if config.init.get("stats", True) and not config.data.get("stats_from"):
      stats = saved.data.get("stats_from") or saved.data.get("dir")
      if not stats:
        raise ValueError(f"config.init.workdir={init_dir}: its {run_dir.RUN_CONFIG} names no "
                         "data directory, so its statistics are unknown; set "
                         "config.data.stats_from")
      config.data.stats_from = stats
    if config.task == "av" and not config.head_vae.get("workdir"):
      vae = saved.get("head_vae", {}).get("workdir")
      if vae:
        config.head_vae.workdir = vae
  return config


def _paths_and_shapes(tree) -> dict:
  return {jax.tree_util.keystr(p): tuple(x.shape)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def _check_same(what: str, got, want) -> None:
  g, w = _paths_and_shapes(got), _paths_and_shapes(want)
  for path in sorted(set(w) | set(g)):
    if path not in g:
      raise ValueError(f"{what}: has no parameter {path} (the model of this config has it)")
    if path not in w:
      raise ValueError(f"{what}: parameter {path} is not in the model of this config")
    if g[path] != w[path]:
      raise ValueError(f"{what}: parameter {path} has shape {g[path]}, this config's model "
                       f"{w[path]} (config.model must match the initial run's)")


def _restore_tree(init_dir: str, step: int, name: str, target) -> Any:
  path = os.path.join(run_dir.checkpoint_root(init_dir), str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  meta = checkpointer.metadata(path).item_metadata.tree
  if name not in meta:
    return None
  restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), target)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(
      item={name: target}, restore_args={name: restore_args}, partial_restore=True))[name]


def _adam_state(opt_state):
  """The ScaleByAdamState inside an optax chain state (adamw puts it first)."""
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(
      x, optax.ScaleByAdamState)) if isinstance(s, optax.ScaleByAdamState)]
  if len(found) != 1:
    raise ValueError(f"config.init.adam_moments: the optimiser has {len(found)} Adam states, "
                     "expected one")
  return found[0]


def _replace_adam(opt_state, new_adam):
  return jax.tree.map(lambda s: new_adam if isinstance(s, optax.ScaleByAdamState) else s,
                      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))


def apply(config, state: dict, state_sharding: dict) -> dict:
  """The fresh train `state` with the initial run's weights (and moments) put in.

  Args:
    config: the run config (`config.init` says what to take).
    state: the freshly initialised train state on the mesh.
    state_sharding: its shardings (the restored arrays land on them).

  Returns:
    The state to start from (step 0).

  Raises:
    ValueError: one line naming config.init.workdir and what does not fit.
  """
  init_dir = _init_dir(config)
  if init_dir is None:
    return state
  which = config.init.get("which", "params")
  what = f"config.init.workdir={init_dir}"
  step, params = run_dir.load_params(init_dir, which, what=what)
  stacked = layer_layout.is_stacked(state["params"])
  converted = layer_layout.is_stacked(params) != stacked
  params = layer_layout.to_layout(params, stacked)  # Either layer layout starts either model.
  _check_same(what, params, state["params"])
  host = jax.device_get(params)
  put = lambda: jax.tree.map(jax.device_put, host, state_sharding["params"])
  # Separate buffers: the train step donates the state, and one buffer donated twice crashes.
  state = dict(state, params=put(), ema=put())
  logging.info("Initial weights: %s (step %d, %s).", init_dir, step, which)
  if not config.init.get("adam_moments", False):
    return state
  if converted:
    raise ValueError(f"{what}: config.init.adam_moments needs the initial run's layer layout "
                     f"(model.scan_layers={not stacked}); set it, or adam_moments=False")
  adam = _adam_state(state["opt_state"])
  adam_sh = _adam_state(state_sharding["opt_state"])
  target = lambda tree, sh: jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
  moments = _restore_tree(init_dir, step, "official_adam", {
      "mu": target(adam.mu, adam_sh.mu), "nu": target(adam.nu, adam_sh.nu),
      "count": jax.ShapeDtypeStruct((), jnp.int32, sharding=adam_sh.count)})
  if moments is None:  # A run of this project: its own optimiser state.
    try:
      restored = _restore_tree(init_dir, step, "opt_state", jax.tree.map(
          lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
          state["opt_state"], state_sharding["opt_state"]))
    except Exception as e:  # pylint: disable=broad-except  (orbax raises many types)
      raise ValueError(f"{what}: its optimiser state does not fit this config's optimiser "
                       f"({str(e).splitlines()[0][:200]}); set config.init.adam_moments=False") from e
    if restored is None:
      raise ValueError(f"{what}: step {step} holds no Adam moments; set "
                       "config.init.adam_moments=False")
    moments = _adam_state(restored)
    moments = {"mu": moments.mu, "nu": moments.nu, "count": moments.count}
  count = jax.device_put(np.asarray(jax.device_get(moments["count"]), np.int32), adam_sh.count)
  new = optax.ScaleByAdamState(count=count, mu=moments["mu"], nu=moments["nu"])
  state["opt_state"] = _replace_adam(state["opt_state"], new)
  logging.info("Adam moments from %s (count %d).", init_dir, int(new.count))
  return state
