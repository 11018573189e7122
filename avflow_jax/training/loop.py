"""The training loop: one function for every task (AV model, head VAE, text to tokens).

`train_and_evaluate(config, workdir)` checks the config against the data and the devices, builds
the task, the mesh and the sharded state, restores the latest checkpoint (with the data
iterator's position) if there is one, and trains: logging with rates and ETA, periodic
validation, checkpoints, and a synchronised save-and-exit on preemption. The command is
`python -m avflow_jax.train`.
"""

import contextlib
import dataclasses
import os
import signal
import time
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from avflow_jax.core import checkpointing
from avflow_jax.core import locks
from avflow_jax.core import metric_writer
from avflow_jax.core import run_dir
from avflow_jax.core import sharding
from avflow_jax.data import manifest as manifest_lib
from avflow_jax.data import rows as rows_lib
from avflow_jax.models import head_vae
from avflow_jax.training import config_validation
from avflow_jax.training import head_vae_recipe
from avflow_jax.training import init_from
from avflow_jax.training import input_feed
from avflow_jax.training import optim
from avflow_jax.training import stopping
from avflow_jax.training import task as task_lib
from avflow_jax.training import tasks

Preempted = stopping.Preempted  # Re-exported: what callers catch.


def resolve_data_dir(config) -> str:
  """The shard directory: config.data.dir, or the demo corpus built on first use."""
  if config.data.dir:
    return os.path.expanduser(config.data.dir)
  from avflow_jax.data import demo_corpus  # Only the demo path needs data_prep.
  return demo_corpus.ensure_demo_shards(config.data.demo_cache, config.data.demo_minutes,
                                      config.data.demo_seed)


def build_task(config, manifest: dict, data_dir: str, workdir: str) -> task_lib.Task:
  """Builds the task; for "av" this loads (or first trains) the frozen head-pose VAE."""
  if config.task == "head_vae":
    return tasks.build_head_vae_task(config, manifest, data_dir)
  if config.task == "text_to_tokens":
    from avflow_jax.training import t2t_task  # Imported lazily: pulls in the text front end.
    return t2t_task.build_t2t_task(config, manifest, data_dir)
  vae_model, vae_params = load_or_train_head_vae(config, manifest, data_dir, workdir)
  return tasks.build_av_task(config, manifest, data_dir, vae_model, vae_params)


def load_or_train_head_vae(config, manifest, data_dir, workdir):
  """Returns (module, params) of the head VAE, training it first if no workdir is given."""
  vae_dir = config.head_vae.workdir
  vae_cfg = head_vae_recipe.for_av_run(config)
  if not vae_dir:
    vae_dir = os.path.join(workdir, run_dir.HEAD_VAE_DIR)
    if run_dir.latest_step(vae_dir) != vae_cfg.num_steps:
      logging.info("No head-VAE workdir given: training one into %s (%d steps).", vae_dir,
                   vae_cfg.num_steps)
      train_and_evaluate(vae_cfg, vae_dir)
  if run_dir.has_run_config(vae_dir):
    vae_cfg = run_dir.read_run_config(vae_dir, "config.head_vae.workdir")  # As it was trained.
  model = head_vae.from_config(vae_cfg, manifest["dims"]["head"])
  _, params = run_dir.load_params(vae_dir, which="params",
                                  what=f"config.head_vae.workdir={vae_dir}")
  got = params["enc_in"]["kernel"].shape[0]
  if got != manifest["dims"]["head"]:
    raise ValueError(f"config.head_vae.workdir={vae_dir}: the VAE takes {got}-d head poses but "
                     f"the data has {manifest['dims']['head']}-d")
  # Host numpy: the small frozen VAE is a constant of the jitted step, identical on every host
  # (moving a device array onto a global sharding would be a cross-host transfer).
  return model, jax.device_get(params)


def make_train_state(task: task_lib.Task, tx: optax.GradientTransformation, mesh, rng,
                     rules):
  """The train state's init function, its shardings on `mesh` and its abstract shapes.

  Params carry logical axis names; `rules` (config.mesh.rules) turn them into NamedShardings, so
  with fsdp > 1 the large kernels are split across devices and the Adam moments follow them.

  Returns:
    (jitted rng -> state placed on the mesh, state shardings, abstract state).
  """
  def init_state(rng):
    params = task.init(rng)
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": tx.init(params), "ema": params}

  boxed = jax.eval_shape(init_state, rng)
  state_sharding = sharding.logical_shardings(boxed, mesh, rules)
  init_fn = jax.jit(lambda r: nn.unbox(init_state(r)), out_shardings=state_sharding)
  return init_fn, state_sharding, nn.unbox(boxed)


def make_train_step(task: task_lib.Task, tx: optax.GradientTransformation, schedule, config):
  """The update: loss and grads, AdamW, EMA; skips the update if anything is non-finite."""
  base_rng = jax.random.PRNGKey(config.seed)

  def train_step(state, batch):
    step = state["step"]
    rng = jax.random.fold_in(base_rng, step)
    (loss, metrics), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(
        state["params"], batch, rng, True)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    ema = optim.ema_update(state["ema"], params, step, config.optim.ema_decay)
    new = {"step": step + 1, "params": params, "opt_state": opt_state, "ema": ema}
    # A NaN/Inf anywhere keeps the old state, so nothing non-finite is ever checkpointed.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, lr=schedule(step),
                   finite=finite)
    # Which input streams carried NaN/Inf, so the error can name the data, not just the loss.
    for k, v in batch.items():
      if jnp.issubdtype(v.dtype, jnp.floating):
        metrics["input_finite_" + k] = jnp.isfinite(v).all()
    return new, metrics

  return train_step


def make_eval_step(task: task_lib.Task, config):
  base_rng = jax.random.PRNGKey(config.seed + 1)

  def eval_step(params, batch, index):
    loss, metrics = task.loss_fn(params, batch, jax.random.fold_in(base_rng, index), False)
    return dict(metrics, loss=loss)

  return eval_step


def _check_finite(metrics: dict, step: int):
  """Stops the run naming the step and what went non-finite (checked one step behind)."""
  if bool(metrics["finite"]):
    return
  bad = [k for k, v in metrics.items() if k.startswith("loss_") and not np.isfinite(v)]
  what = ", ".join(k[len("loss_"):] for k in bad) if bad else "gradients"
  inputs = [k[len("input_finite_"):] for k, v in metrics.items()
            if k.startswith("input_finite_") and not bool(v)]
  if inputs:
    what += f"; non-finite input data: {', '.join(inputs)}"
  raise FloatingPointError(
      f"non-finite loss or gradient at step {step} (modality: {what}); the update was "
      "skipped and the last good checkpoint is kept. Lower config.optim.lr or set "
      "config.optim.grad_clip.")


def jit_steps(task: task_lib.Task, tx, schedule, config, mesh, state_sharding):
  """The compiled (train step, eval step) with in/out shardings on `mesh`.

  The train step donates the state (the update happens in place) and returns replicated
  metrics; benchmarks time exactly this program.
  """
  batch_sh = sharding.batch_sharding(mesh)
  repl = sharding.replicated(mesh)
  train_step = jax.jit(make_train_step(task, tx, schedule, config),
                       in_shardings=(state_sharding, batch_sh),
                       out_shardings=(state_sharding, repl), donate_argnums=0)
  eval_step = jax.jit(make_eval_step(task, config),
                      in_shardings=(state_sharding["params"], batch_sh, repl),
                      out_shardings=repl)
  return train_step, eval_step


def _log_metrics(writer, step: int, num_steps: int, metrics: dict, rate: float,
                 frames_per_step: int) -> dict[str, float]:
  """Checks, writes and prints one step's metrics with rates and ETA; returns them as floats."""
  _check_finite(metrics, step - 1)
  host = {k: float(v) for k, v in metrics.items()
          if k != "finite" and not k.startswith("input_finite_")}
  host.update(steps_per_s=rate, frames_per_s=rate * frames_per_step)
  writer.scalars(step, host)
  logging.info("step %d/%d loss %.4f %s | %.2f steps/s, %.0f frames/s, ETA %s", step,
               num_steps, host["loss"],
               " ".join(f"{k[5:]}={v:.4f}" for k, v in host.items() if k.startswith("loss_")),
               rate, host["frames_per_s"],
               metric_writer.format_eta((num_steps - step) / max(rate, 1e-9)))
  return host


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
  """Runs (or resumes) training; returns the last logged metrics.

  Holds the workdir's lock (process 0) for the whole run, so a second process on the same
  workdir stops at once with one line instead of corrupting the first one's files.

  Raises:
    Preempted: after the checkpoint of a SIGTERM (or SIGINT) was saved.
    ValueError / FileNotFoundError / locks.LockedError: bad config, data or workdir (one line).
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if config.compilation_cache_dir:
    # Restarts (and the second process of a run) reuse compiled programs instead of recompiling.
    jax.config.update("jax_compilation_cache_dir",
                      os.path.expanduser(config.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  logging.info("Process %d/%d: %d local devices, %d global (%s); workdir %s",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count(), jax.devices()[0].platform, workdir)
  lock = (locks.hold(workdir, "--workdir", logging.warning) if jax.process_index() == 0
          else contextlib.nullcontext())
  stop = stopping.StopFlag()
  with lock:
    if jax.process_count() == 1:
      stop.install()  # Before data and compilation: a Ctrl-C there still saves nothing half.
    try:
      return _train(_set_up(config, workdir), stop)
    finally:
      stop.uninstall()


@dataclasses.dataclass
class _Run:
  """Everything the loop needs, built by `_set_up`."""
  config: Any
  workdir: str
  manifest: dict
  mesh: Any
  task: task_lib.Task
  manager: Any
  state: Any
  start_step: int
  train_iter: Any
  train_step: Any
  eval_step: Any


def _check_resume(config, workdir: str):
  """A workdir with checkpoints keeps the fields its checkpoints were trained with."""
  if run_dir.latest_step(workdir) is None or not run_dir.has_run_config(workdir):
    return config
  path = os.path.join(workdir, run_dir.RUN_CONFIG)
  saved = run_dir.read_run_config(workdir)
  config_validation.check_resume(saved, config, path)
  if ("crop_sampling" not in saved.get("data", {}) and "crop_sampling" in config.data
      and config.data.crop_sampling != "clips"):
    # Saved before the knob existed: its data position is one of clip-uniform sampling.
    logging.warning("%s predates data.crop_sampling: resuming with 'clips', the sampling it "
                    "was trained with, so the batches continue exactly", path)
    config = config.copy_and_resolve_references()
    config.data.crop_sampling = "clips"
  return config


def _set_up(config, workdir: str) -> _Run:
  """Checks, the mesh, the task, the sharded state (restored if possible), the compiled steps."""
  data_dir = resolve_data_dir(config)
  config = init_from.resolve(config)
  manifest = manifest_lib.with_stats_from(manifest_lib.load_manifest(data_dir), data_dir,
                                          config.data.get("stats_from"))
  config_validation.validate(config, manifest, jax.device_count(), jax.process_count())
  config = _check_resume(config, workdir)
  run_dir.save_run_config(config, workdir, data_dir)

  mesh = sharding.make_mesh(config.mesh)
  logging.info("Mesh: %s", dict(mesh.shape))
  task = build_task(config, manifest, data_dir, workdir)
  tx, schedule = optim.make_optimizer(config)
  init_rng = jax.random.PRNGKey(config.seed)
  init_fn, state_sharding, abstract_state = make_train_state(task, tx, mesh, init_rng,
                                                             config.mesh.rules)
  num_params = sum(x.size for x in jax.tree.leaves(abstract_state["params"]))
  logging.info("Task %s: %s parameters.", task.name, f"{num_params:,}")

  rows = rows_lib.process_rows(config.batch_size, sharding.batch_sharding(mesh))
  train_iter = iter(input_feed.to_devices(
      task.make_dataset(config.data.train_split, config.seed, rows), mesh))

  manager = checkpointing.make_manager(
      os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
      async_save=config.async_checkpointing, save_interval=config.ckpt_every)
  start_step, state = checkpointing.restore(
      manager, checkpointing.abstract_with_shardings(abstract_state, state_sharding),
      train_iter)
  if state is None:
    start_step, state = 0, init_from.apply(config, init_fn(init_rng), state_sharding)
  else:
    logging.info("Resumed from step %d.", start_step)
  train_step, eval_step = jit_steps(task, tx, schedule, config, mesh, state_sharding)
  return _Run(config, workdir, manifest, mesh, task, manager, state, start_step, train_iter,
              train_step, eval_step)


def _train(run: _Run, stop: stopping.StopFlag) -> dict[str, float]:
  """The train loop: steps, logs, validation, checkpoints, and the save on a stop signal."""
  config, mesh, manager, train_iter = run.config, run.mesh, run.manager, run.train_iter
  state, step = run.state, run.start_step
  writer = metric_writer.MetricWriter(os.path.join(run.workdir, "tensorboard"),
                                      enabled=jax.process_index() == 0,
                                      jsonl_path=os.path.join(run.workdir, "metrics.jsonl"))
  frames_per_step = config.batch_size * run.task.frames_per_example
  last_metrics: dict[str, float] = {}
  pending = None  # (step, metrics) of the previous step, checked once the next is dispatched.
  unsealed: list[int] = []  # Saved steps whose checksums are written once orbax commits them.
  t_log, step_log = time.time(), step
  with metric_writer.progress(step, config.num_steps) as bar:
    while step < config.num_steps:
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = run.train_step(state, next(train_iter))
      if pending is not None:
        _check_finite(jax.device_get(pending[1]), pending[0])
      pending = (step, metrics)
      step += 1
      bar.update(1)

      if step % config.log_every == 0 or step == config.num_steps:
        rate = (step - step_log) / max(time.time() - t_log, 1e-9)
        last_metrics = _log_metrics(writer, step, config.num_steps, jax.device_get(metrics),
                                    rate, frames_per_step)
        t_log, step_log = time.time(), step

      if config.eval_every and step % config.eval_every == 0:
        val = evaluate_loss(run.eval_step, state["params"], run.task, config, mesh,
                            run.manifest)
        if val:
          writer.scalars(step, {"val_" + k: v for k, v in val.items()})
          logging.info("step %d validation: %s", step,
                       " ".join(f"{k}={v:.4f}" for k, v in val.items()))

      preempted = stop.received
      if jax.process_count() > 1:
        preempted = manager.reached_preemption(step)
      if step % config.ckpt_every == 0 or step == config.num_steps or preempted:
        _check_finite(jax.device_get(metrics), step - 1)
        pending = None
        checkpointing.seal(manager, unsealed)  # The previous save is long committed.
        if checkpointing.save(manager, step, state, train_iter, force=True):
          unsealed.append(step)
      if preempted:
        checkpointing.seal(manager, unsealed)
        writer.close()
        interrupted = stop.signum == signal.SIGINT
        logging.warning("%s at step %d: checkpoint saved; exiting.",
                        "Interrupted" if interrupted else "Preempted", step)
        raise Preempted(step, interrupted)

  checkpointing.seal(manager, unsealed)
  manager.close()
  writer.close()
  return last_metrics


def evaluate_loss(eval_step, params, task, config, mesh, manifest) -> dict[str, float]:
  """Mean loss over config.eval_batches fixed validation batches (same batches every time)."""
  split = config.data.eval_split
  if split not in manifest["splits"] or not manifest["splits"][split]["clips"]:
    return {}
  rows = rows_lib.process_rows(config.batch_size, sharding.batch_sharding(mesh))
  it = iter(task.make_dataset(split, config.seed + 1, rows))
  totals: dict[str, float] = {}
  for i in range(config.eval_batches):
    m = jax.device_get(eval_step(params, sharding.global_batch(next(it), mesh), i))
    for k, v in m.items():
      totals[k] = totals.get(k, 0.0) + float(v) / config.eval_batches
  return totals
