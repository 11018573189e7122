"""What the benchmarks share: configs, timing, train.py's compiled step, device peaks."""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from avflow_jax.core import cli  # pylint: disable=wrong-import-position
from avflow_jax.core import sharding  # pylint: disable=wrong-import-position
from avflow_jax.data import manifest as manifest_lib  # pylint: disable=wrong-import-position
from avflow_jax.data import rows as rows_lib  # pylint: disable=wrong-import-position
from avflow_jax.models import head_vae  # pylint: disable=wrong-import-position
from avflow_jax.training import head_vae_recipe  # pylint: disable=wrong-import-position
from avflow_jax.training import loop  # pylint: disable=wrong-import-position
from avflow_jax.training import optim  # pylint: disable=wrong-import-position
from avflow_jax.training import tasks  # pylint: disable=wrong-import-position

# Dense matmul peaks per chip in TFLOP/s (vendor datasheets; GPUs: SXM parts, no sparsity).
# float32 matmuls on NVIDIA GPUs run as TF32 under JAX's default precision.
PEAK_TFLOPS = {
    "H100": {"bfloat16": 989.0, "float32": 494.5},
    "H200": {"bfloat16": 989.0, "float32": 494.5},
    "A100": {"bfloat16": 312.0, "float32": 156.0},
    "TPU v4": {"bfloat16": 275.0, "float32": 275.0 / 3},
    "TPU v5 lite": {"bfloat16": 197.0, "float32": 197.0 / 3},  # v5e
    "TPU v5e": {"bfloat16": 197.0, "float32": 197.0 / 3},
    "TPU v5p": {"bfloat16": 459.0, "float32": 459.0 / 3},
    "TPU v5": {"bfloat16": 459.0, "float32": 459.0 / 3},  # v5p reports "TPU v5"
}


def load_config(path):
  """`get_config(ARG)` of a config file given as PATH or PATH:ARG (the package's own loader)."""
  return cli.load_config_file(path)


def _times(fn, repeats) -> list:
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def median_time(fn, repeats) -> float:
  return float(np.median(_times(fn, repeats)))


def best_time(fn, repeats) -> float:
  return float(min(_times(fn, repeats)))


def device_peak(dtype: str):
  """(peak TFLOP/s per device, source) from `PEAK_TFLOPS`; (None, None) when not listed."""
  kind = jax.devices()[0].device_kind
  for name in sorted(PEAK_TFLOPS, key=len, reverse=True):  # "TPU v5 lite" before "TPU v5".
    if name.lower() in kind.lower():
      return PEAK_TFLOPS[name][dtype], f"datasheet ({name})"
  return None, None


def matmul_peak(dtype: str, n: int = 2048, repeats: int = 10) -> float:
  """Measured TFLOP/s of one jitted n x n matmul on the default device (the CPU's 'peak').

  The best of `repeats`: a peak is what the machine can reach (its speed drifts by 2x from
  run to run on a shared box, so compare figures of one run only).
  """
  dt = jnp.dtype(dtype)
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), dt)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  s = best_time(lambda: f(a, a).block_until_ready(), repeats)
  return 2 * n ** 3 / s / 1e12


def peak_tflops(dtype: str, n: int = 2048) -> tuple[float, str]:
  """The device's peak per device: the datasheet's, else an n x n matmul measured now."""
  peak, source = device_peak(dtype)
  if peak is None:
    return matmul_peak(dtype, n), f"measured {dtype} {n}^3 matmul"
  return peak, source


def cost_flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def memory_bytes(compiled) -> dict:
  """Per-device bytes of a compiled program (XLA's memory analysis), or {} if unsupported."""
  try:
    m = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except  (not every backend implements it)
    return {}
  if m is None:
    return {}
  out = {k: int(getattr(m, f"{k}_size_in_bytes", 0)) for k in
         ("argument", "output", "temp", "alias", "generated_code")}
  # Donated arguments alias outputs: live at once are arguments + temporaries + new outputs.
  out["peak"] = out["argument"] + out["temp"] + out["output"] - out["alias"]
  return out


class TrainProgram:
  """train.py's train step for `config` on `data_dir`: the program, a state and a batch.

  The step is `training.loop.jit_steps`' (loss with masks and the frozen head-VAE encode,
  AdamW, EMA, the finite guard, state donation) on a batch from the task's own input
  pipeline; the head VAE has random weights.
  """

  def __init__(self, config, data_dir: str, compile_only: bool = False,
               lower_only: bool = False):
    manifest = manifest_lib.load_manifest(data_dir)
    head = manifest["dims"]["head"]
    vae = head_vae.from_config(head_vae_recipe.for_av_run(config), head)
    vae_params = jax.device_get(vae.init(jax.random.PRNGKey(1), jnp.zeros((1, 8, head)))["params"])
    task = tasks.build_av_task(config, manifest, data_dir, vae, vae_params)
    tx, schedule = optim.make_optimizer(config)
    self.mesh = sharding.make_mesh(config.mesh)
    init_fn, state_sh, abstract = loop.make_train_state(task, tx, self.mesh,
                                                        jax.random.PRNGKey(0), config.mesh.rules)
    train_step, _ = loop.jit_steps(task, tx, schedule, config, self.mesh, state_sh)
    self.params = sum(x.size for x in jax.tree.leaves(abstract["params"]))
    rows = rows_lib.process_rows(config.batch_size, sharding.batch_sharding(self.mesh))
    self.task, self.rows = task, rows
    local = next(iter(task.make_dataset("train", 0, rows)))
    if compile_only or lower_only:
      batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
          (config.batch_size,) + x.shape[1:], x.dtype,
          sharding=sharding.batch_sharding(self.mesh)), local)
      state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                           abstract, state_sh)
    else:
      batch = sharding.global_batch(local, self.mesh)
      state = init_fn(jax.random.PRNGKey(0))
    lowered = train_step.lower(state, batch)
    if lower_only:  # XLA's cost analysis of the HLO, before compilation.
      self.flops = cost_flops(lowered)
      return
    t0 = time.perf_counter()
    self.compiled = lowered.compile()
    self.compile_s = time.perf_counter() - t0
    self.flops = cost_flops(self.compiled)
    if config.model.get("scan_layers", False):
      # XLA counts a loop body once: count the same step unrolled (the same arithmetic).
      unrolled = config.copy_and_resolve_references()
      unrolled.model.scan_layers = False
      self.flops = TrainProgram(unrolled, data_dir, lower_only=True).flops
    self.memory = memory_bytes(self.compiled)
    self._state, self._batch = state, batch

  def time_step(self, repeats: int) -> float:
    """Median seconds of one step (the compiled program itself, state threaded through)."""
    holder = [self._state]

    def step():
      holder[0], metrics = self.compiled(holder[0], self._batch)
      jax.block_until_ready(metrics)

    step()  # Warm up (first dispatch).
    seconds = median_time(step, repeats)
    self._state = holder[0]
    return seconds

  def staged_batches(self, n: int) -> list:
    """The task pipeline's first `n` batches, already on the devices."""
    it = iter(self.task.make_dataset("train", 0, self.rows))
    return [sharding.global_batch(next(it), self.mesh) for _ in range(n)]

  def time_chain(self, steps: int, batches=None) -> float:
    """Seconds per step of `steps` steps dispatched back to back (one wait at the end), as a
    loop that never waits on the host would run them; over `batches` in turn (distinct batches
    already on the devices; one fixed batch stays in the CPU's caches and runs ~8% faster)."""
    batches = batches or [self._batch]
    state, metrics = self.compiled(self._state, batches[0])
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for i in range(steps):
      state, metrics = self.compiled(state, batches[i % len(batches)])
    jax.block_until_ready((state, metrics))
    self._state = state
    return (time.perf_counter() - t0) / steps
