"""Feeding the devices: host batches assembled and transferred ahead of the step that uses them.

The loop dispatches step k asynchronously and then asks for batch k + 1; if that batch were
read, normalised and copied to the devices only then, the devices would wait on the host every
step. Two background threads keep batches ready: one pulls host batches from the pipeline
(Grain workers, when `data.num_workers` > 0, assemble them in other processes), the other
turns them into sharded global arrays, so the transfer of the next batch overlaps the current
step. Grain's prefetching iterators report the position of the last batch handed out, not of
the last one read ahead, so a checkpoint still resumes exactly.
"""

import grain

from avflow_jax.core import sharding


def to_devices(ds: grain.IterDataset, mesh, host_buffer: int = 2,
               device_buffer: int = 2) -> grain.IterDataset:
  """`ds`'s per-host numpy batches as global jax.Arrays sharded over the mesh, prefetched.

  Args:
    ds: per-host batches (dicts of numpy arrays with a leading batch axis).
    mesh: the device mesh; batches are sharded with `sharding.batch_sharding(mesh)`.
    host_buffer: host batches read ahead.
    device_buffer: batches already on the devices ahead of use (each holds device memory).

  Returns:
    An IterDataset whose iterator's state (for checkpoints) is that of the batches consumed.
  """
  ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=host_buffer)
  ds = ds.map(lambda batch: sharding.global_batch(batch, mesh))
  return grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=device_buffer)
