"""Device mesh and the mapping from logical parameter axes to mesh axes."""

from typing import Any

import flax.linen as nn
import jax
from jax.sharding import AxisType
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

MESH_AXES = ("data", "fsdp")
# Logical axes named in the model -> mesh axes. 'embed' (the d_model side of every kernel) is
# sharded over fsdp; everything else is replicated. The batch is split over both mesh axes.


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int]:
  """Resolves the (data, fsdp) sizes; one -1 fills the devices left. Errors name the field."""
  sizes = [int(mesh_cfg.data), int(mesh_cfg.fsdp)]
  if sizes.count(-1) > 1:
    raise ValueError("config.mesh: only one of data/fsdp may be -1")
  for name, s in zip(MESH_AXES, sizes):
    if s == 0 or s < -1:
      raise ValueError(f"config.mesh.{name}={s}: must be a positive size or -1")
  fixed = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if num_devices % fixed:
      raise ValueError(f"config.mesh: {num_devices} devices are not divisible by the fixed "
                       f"axis size {fixed}")
    sizes[sizes.index(-1)] = num_devices // fixed
  if int(np.prod(sizes)) != num_devices:
    raise ValueError(f"config.mesh: data={sizes[0]} x fsdp={sizes[1]} = {np.prod(sizes)} does "
                     f"not match the {num_devices} devices available")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  """A ('data', 'fsdp') mesh with Auto axes (GSPMD decides what the rules do not pin)."""
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices)


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over every mesh axis."""
  return NamedSharding(mesh, P(MESH_AXES))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def logical_rules(rules) -> tuple:
  """`config.mesh.rules` as flax's ((logical axis, mesh axes or None), ...).

  Raises:
    ValueError: a rule that is not a (name, axes) pair or names an axis the mesh lacks.
  """
  out = []
  for rule in rules:
    if len(rule) != 2 or not isinstance(rule[0], str):
      raise ValueError(f"config.mesh.rules: {rule!r} is not a (logical axis, mesh axes) pair")
    name, axes = rule
    axes = tuple(axes) if isinstance(axes, (list, tuple)) else axes
    for a in (axes if isinstance(axes, tuple) else (axes,)):
      if a is not None and a not in MESH_AXES:
        raise ValueError(f"config.mesh.rules: {rule!r} names mesh axis {a!r}; the mesh has "
                         f"{MESH_AXES}")
    out.append((name, axes))
  return tuple(out)


def logical_shardings(boxed_tree: Any, mesh, rules) -> Any:
  """NamedShardings for a tree whose leaves may be `nn.LogicallyPartitioned` boxes.

  Args:
    boxed_tree: params (or a train state) with logical axis names on their leaves.
    mesh: the device mesh.
    rules: `config.mesh.rules`: which mesh axes each logical axis is split over.
  """
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, logical_rules(rules))


def global_batch(local_batch: dict, mesh) -> dict:
  """Assembles per-host numpy batches into global jax.Arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x),
                      local_batch)
