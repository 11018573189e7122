"""Test setup: 8 fake CPU devices (set before JAX starts) and shared fixtures."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # pylint: disable=g-import-not-at-top
import pytest

# Grain and other absl users read flags outside app.run.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: a long test (kept few)")
  config.addinivalue_line("markers", "gpu_only: needs a GPU")


@pytest.fixture(scope="session")
def tiny_shards(tmp_path_factory):
  """A small prepared dataset (train + val) in the shard format, made without data_prep."""
  from tests import fixtures
  return fixtures.write_synthetic_shards(str(tmp_path_factory.mktemp("shards")))
