r"""Command: `python -m avflow_jax.evaluate_text` (see `avflow_jax.evaluation.text_scoring`).

Scores the text-to-tokens model through the avatar: lip closures from text alone.
"""

import sys

from avflow_jax.evaluation import text_scoring

if __name__ == "__main__":
  sys.exit(text_scoring.main())
