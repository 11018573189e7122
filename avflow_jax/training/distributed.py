"""Multi-host start: jax.distributed from flags or from the cluster's environment."""

import os
from typing import Optional

from absl import logging
import jax

# Variables that mean "this process is one of several" on the launchers JAX detects.
_CLUSTER_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "JAX_COORDINATOR_ADDRESS",
                "TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS")


def _in_multiprocess_cluster() -> bool:
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    return True
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
    return True
  return bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, timeout: int = 300) -> None:
  """Initialises jax.distributed when the run spans several processes.

  Explicit flags win; otherwise the cluster environment (SLURM, Open MPI, JAX_COORDINATOR_*)
  is detected by JAX. A single process with no cluster environment is left alone.

  Raises:
    RuntimeError: naming the coordinator and the timeout when the hosts do not meet in time.
  """
  explicit = coordinator_address is not None or (num_processes or 1) > 1
  if not explicit and not _in_multiprocess_cluster():
    return
  if explicit and (coordinator_address is None or num_processes is None or process_id is None):
    raise ValueError("--coordinator_address, --num_processes and --process_id must be given "
                     "together")
  try:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout)
  except Exception as e:  # Timeouts surface as several XLA error types.
    where = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS", "auto-detected")
    raise RuntimeError(f"jax.distributed did not start within {timeout} s (coordinator "
                       f"{where}): {e}") from e
  logging.info("jax.distributed: process %d of %d, %d local devices, %d global devices.",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
