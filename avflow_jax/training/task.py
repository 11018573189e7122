"""The task-specific pieces of a training run, as one record the loop consumes."""

import dataclasses
from typing import Any, Callable

import jax


@dataclasses.dataclass
class Task:
  """The task-specific pieces of a training run.

  Attributes:
    name: task name.
    init: rng -> params (leaves may be nn.LogicallyPartitioned boxes).
    loss_fn: (params, batch, rng, train) -> (scalar loss, dict of scalar metrics).
    make_dataset: (split, seed, rows) -> grain IterDataset of per-host numpy batch dicts, where
      rows are the rows of each global batch this host reads (rows.process_rows).
    frames_per_example: frames in one example (for frames/s).
  """
  name: str
  init: Callable[[jax.Array], Any]
  loss_fn: Callable[..., Any]
  make_dataset: Callable[..., Any]
  frames_per_example: int
