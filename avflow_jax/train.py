r"""Trains AV-Flow (or the head-pose VAE, or text-to-tokens) on a device mesh.

  python -m avflow_jax.train --config configs/base.py --workdir /tmp/avflow
  python -m avflow_jax.train --config configs/base.py --config.data.dir=/data/shards \
      --config.batch_size=32 --config.mesh.fsdp=2

With no `--config.data.dir` the demo avatar's corpus is generated and prepared once, then used.
A restarted run resumes from the latest checkpoint in WORKDIR/checkpoints by itself, with the
same data order. SIGTERM (or JAX's preemption notice on a cluster) saves a checkpoint on every
process at the same step and exits with code 75; Ctrl-C (SIGINT) saves and exits with 130 (a
second Ctrl-C quits at once). A bad config field, a misspelt one (answered with the closest
name), bad data or a workdir in use by another process: one `error:` line, exit code 1.
"""

import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from avflow_jax.core import locks
from avflow_jax.core import metric_writer
from avflow_jax.core.errors import EXIT_PREEMPTED
from avflow_jax.training import distributed
from avflow_jax.training import loop
from avflow_jax.training import stopping

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
  except loop.Preempted as e:
    sys.exit(stopping.EXIT_INTERRUPTED if e.interrupted else EXIT_PREEMPTED)
  except KeyboardInterrupt:  # Multi-process runs, or before the loop installed its handler.
    print("error: interrupted (nothing half-written: the last committed checkpoint stands)",
          file=sys.stderr)
    sys.exit(stopping.EXIT_INTERRUPTED)
  except (ValueError, FileNotFoundError, FloatingPointError, locks.LockedError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


def config_override_error(argv: list[str], error: Exception) -> str:
  """One line for a `--config.a.b=...` naming a field the config does not have.

  ml_collections raises KeyError/AttributeError with its own "Did you mean" suggestion (the
  closest field name); this names the flag and keeps the suggestion.
  """
  text = str(error)
  suggestion = re.search(r'Did you mean \\?"([^"\\]+)\\?" instead of \\?"([^"\\]+)', text)
  if suggestion:
    key = suggestion.group(2)
  else:
    found = re.search(r"'([^'\\]+)", text)
    key = found.group(1) if found else text
  flag = next((a.split("=")[0] for a in argv if a.startswith("--config.")
               and key in a.split("=")[0].split(".")), "--config")
  hint = f"; did you mean {suggestion.group(1)!r}?" if suggestion else ""
  return f"{flag}: the config has no field {key!r}{hint}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a misspelt config field as one line (exit 1), not a traceback."""
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError) as e:
    print(f"error: {config_override_error(argv, e)}", file=sys.stderr)
    sys.exit(1)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
