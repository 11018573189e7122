r"""Command: `python -m avflow_jax.evaluate` (see `avflow_jax.evaluation.scoring`).

Evaluates a trained avatar on held-out clips with the paper's metrics.
"""

import sys

from avflow_jax.evaluation import scoring

if __name__ == "__main__":
  sys.exit(scoring.main())
