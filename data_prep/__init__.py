"""Offline data preparation for avflow_jax: raw corpora -> ArrayRecord shards + manifest.

Run `python -m data_prep --help`; see docs/data_prep.md. Never imports torch.
"""

PREP_VERSION = 1  # bump when the content of a record changes (invalidates .cache/).
