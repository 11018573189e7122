r"""Command: `python -m avflow_jax.paper_table` (see `avflow_jax.evaluation.paper_table`).

Scores several AV runs (AV-Flow and its ablations) with one protocol and writes the paper's
Table 1 as markdown and JSON.
"""

import sys

from avflow_jax.evaluation import paper_table
from avflow_jax.evaluation import scoring
from avflow_jax.evaluation import text_scoring


def main(argv=None) -> int:
  return paper_table.main(argv, evaluate=scoring.evaluate,
                          evaluate_text=text_scoring.evaluate_text)


if __name__ == "__main__":
  sys.exit(main())
