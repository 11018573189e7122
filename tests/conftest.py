"""Test setup: 8 fake CPU devices (set before JAX starts) and shared fixtures."""

import atexit
import os
import shutil
import tempfile

# librosa's numba kernels (onset peak picking, DTW) cache their compiled code next to their
# sources (cache=True). Two pytest-xdist workers compiling the same kernel in a fresh install can
# load each other's half-written cache files and segfault, so each test process gets its own
# cache directory (set before anything imports numba).
os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="avflow_numba_cache_")
atexit.register(shutil.rmtree, os.environ["NUMBA_CACHE_DIR"], ignore_errors=True)

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
  from data_prep import synthetic  # pylint: disable=g-import-not-at-top  (after the XLA flags)
  return synthetic.write_synthetic_shards(str(tmp_path_factory.mktemp("shards")))


@pytest.fixture(scope="session")
def demo_shards(tmp_path_factory):
  """A 2-minute demo corpus (eSpeak speech, rig, head pose) prepared into shards."""
  pytest.importorskip("espeakng_loader")
  from data_prep import demo
  from data_prep import prepare
  root = tmp_path_factory.mktemp("demo_corpus")
  corpus, shards = str(root / "corpus"), str(root / "shards")
  demo.generate(corpus, minutes=2.0, seed=3, workers=1, progress=False)
  assert prepare.main(["--format", "avflow50h", "--input", corpus, "--output", shards,
                       "--workers", "1", "--no-progress"]) == 0
  return shards


def _fewer_optimisations():
  import jax  # pylint: disable=g-import-not-at-top
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", True)
  return lambda: jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture
def fast_compile_here():
  """`fast_compile` for one test (its module's other tests keep XLA's optimisations)."""
  restore = _fewer_optimisations()
  yield
  restore()


@pytest.fixture(scope="module")
def fast_compile():
  """XLA without most optimisation passes, for a module of small models (compile >> run).

  The numerics stay float32; use it with `pytestmark = pytest.mark.usefixtures("fast_compile")`.
  """
  restore = _fewer_optimisations()
  yield
  restore()
