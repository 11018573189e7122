"""`python -m data_prep --format ... --input DIR --output DIR`: see data_prep/prepare.py."""

import sys

from data_prep import prepare

if __name__ == "__main__":  # Guard: spawned workers re-import this module.
  sys.exit(prepare.main())
