r"""Trains AV-Flow (or the head-pose VAE, or text-to-tokens) on a device mesh.

  python -m avflow_jax.train --config configs/base.py --workdir /tmp/avflow
  python -m avflow_jax.train --config configs/base.py --config.data.dir=/data/shards \
      --config.batch_size=32 --config.mesh.fsdp=2

With no `--config.data.dir` the demo avatar's corpus is generated and prepared once, then used.
A restarted run resumes from the latest checkpoint in WORKDIR/checkpoints by itself, with the
same data order. SIGTERM (or JAX's preemption notice on a cluster) saves a checkpoint on every
process at the same step and exits with code 75.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from avflow_jax.core import metric_writer
from avflow_jax.core.errors import EXIT_PREEMPTED
from avflow_jax.training import distributed
from avflow_jax.training import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs). "
                               "Default: ./workdir/<task>.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0 for multi-host runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  config = _CONFIG.value
  metric_writer.quiet_library_logs()
  if config is None:
    raise app.UsageError("--config is required, e.g. --config configs/base.py")
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                         timeout=config.distributed_init_timeout)
  workdir = _WORKDIR.value or os.path.join("workdir", config.task)
  try:
    loop.train_and_evaluate(config, workdir)
  except loop.Preempted:
    sys.exit(EXIT_PREEMPTED)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
