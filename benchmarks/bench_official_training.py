r"""Trains the official PyTorch AV-Flow model and avflow_jax's side by side on the same batches.

  python benchmarks/bench_official_training.py --official /path/to/av_flow \
      [--config configs/demo.py] [--steps N] [--eval-every K] [--batches-seed S] [--same-init] \
      [--workdir DIR] [--head-vae-workdir DIR]

`--official` is a checkout of github:facebookresearch/av_flow (fetched outside CI). Its network,
`models/diffusion.py` (`AVWindowedDiffusionTransformer` inside `AVDiffusionWrapper`), is imported
from that path at run time; none of its code is copied here.

Equivalent on both sides:
  * the batches: avflow_jax's own pipeline (`task.make_dataset`, the crops `python -m
    avflow_jax.train` reads), drawn once per step as numpy and fed to both;
  * the head target: the same frozen head VAE (trained once with avflow_jax into
    WORKDIR/head_vae, as the loop does, or reused), its posterior mean fed to both;
  * the flow time t and the noise x0: per step the values the JAX train step draws itself
    (fold_in(PRNGKey(seed), step), split in 3, as `tasks.build_av_task`), computed here with
    the same jax.random calls and handed to torch as numpy;
  * the recipe of --config: sizes, windows, AdamW (b1, b2, eps 1e-8 as optax, weight decay), the
    warmup/cosine lr schedule (optax's value at each step), global-norm clipping as optax does
    it, the EMA with its warm-up, sigma_min, the loss weights and masks (face: face_mask * valid,
    head and mel: valid), the loss written as the official trainer does (|x1_pred - x1| with
    x1_pred = v + (1 - sigma_min) x0, equal to |v - u|);
  * the validation loss: `loop.evaluate_loss` for JAX (config.eval_batches fixed crops of the
    eval split with fixed t and noise, raw params, not EMA); the same crops, t and noise for torch.
JAX's side is `loop.jit_steps`' program, the one train.py runs (head-VAE encode, AdamW, EMA,
finite guard, donation); the torch side's update is written here (the official trainer
hard-codes CUDA, its own data and its fixed recipe: constant lr, no clipping, no EMA, eps 1e-9).

What differs: the initial weights (each side's own default init, seeded by config.seed; with
--same-init avflow_jax's are copied into the torch model), float summation order, the
attention's implementation (official: dense T x T scores with an additive band mask; avflow_jax:
blockwise windowed; the official model has no key-length masking, so clips shorter than the crop
would differ: the demo's never are), and torch's GELU/LayerNorm kernels.

Prints progress lines with rates and ETA, the validation curves per modality (face, head latent,
mel, total) at the eval steps, then as its last line one JSON object with both curves.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import torch  # pylint: disable=wrong-import-position

from avflow_jax.core import flow  # pylint: disable=wrong-import-position
from avflow_jax.core import metric_writer  # pylint: disable=wrong-import-position
from avflow_jax.core import sharding  # pylint: disable=wrong-import-position
from avflow_jax.core.cli import load_config_file as load_config  # pylint: disable=wrong-import-position
from avflow_jax.data import manifest as manifest_lib  # pylint: disable=wrong-import-position
from avflow_jax.data import rows as rows_lib  # pylint: disable=wrong-import-position
from avflow_jax.models import av_config
from avflow_jax.training import config_validation  # pylint: disable=wrong-import-position
from avflow_jax.training import loop  # pylint: disable=wrong-import-position
from avflow_jax.training import optim  # pylint: disable=wrong-import-position
from avflow_jax.training import tasks  # pylint: disable=wrong-import-position

KEYS = ("face", "head", "mel", "total")


def import_official(path):
  """The official `models.diffusion` module, imported from the checkout at `path`.

  `models/diffusion.py` and `models/layers.py` import only torch, math and typing, so nothing is
  stubbed. The trainer (`learn/`) is not imported: it needs CUDA, torchaudio, cv2 and the release's
  assets at construction.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(os.path.join(path, "models", "diffusion.py")):
    raise SystemExit(f"--official {path}: no models/diffusion.py (a facebookresearch/av_flow "
                     "checkout is expected)")
  sys.path.insert(0, path)
  from models import diffusion  # pylint: disable=import-outside-toplevel
  return diffusion


def build_torch_model(diffusion, config, av_dims: av_config.AVDims):
  """The official network with config.model's sizes, built under torch.manual_seed(seed)."""
  if not config.model.fusion:
    raise SystemExit("config.model.fusion=False: the official model always fuses the towers")
  windows = []
  for w in av_config.layer_windows(config.model.windows, config.model.num_layers):
    # avflow_jax reads a pair with a negative side as unbounded on both sides (dit.py).
    windows.append((None, None) if min(w) < 0 else w)
  torch.manual_seed(config.seed)
  core = diffusion.AVWindowedDiffusionTransformer(
      visual_dim=av_dims.visual, audio_dim=av_dims.audio, condition_dim=av_dims.cond,
      window_per_layer=tuple(windows), d_model=config.model.d_model,
      hidden_dim=config.model.hidden_dim, heads=config.model.num_heads, dropout=0.0)
  return diffusion.AVDiffusionWrapper(core, participant_cond=bool(config.data.participant))


def copy_jax_params(params, model) -> None:
  """Copies avflow_jax's params into the official model (kernels transposed); checks coverage."""
  core = model.diffusion_module
  pairs = [(params["time_embed"]["fc1"], core.time_embed.mlp[0]),
           (params["time_embed"]["fc2"], core.time_embed.mlp[2])]
  pairs += [(params[n], getattr(core, n))
            for n in ("input_proj_v", "input_proj_a", "out_v", "out_a")]
  for i, fusion in enumerate(core.fusion):
    pairs.append((params[f"fusion_{i}"], fusion))
    for tower, blocks in (("v", core.transformer_blocks_v), ("a", core.transformer_blocks_a)):
      p, b = params[f"block_{tower}_{i}"], blocks[i]
      pairs += [(p["attn_mod"]["adaln"], b.self_attn.ada_ln.linear),
                (p["attn"]["qkv"], b.self_attn.self_attn.qkv),
                (p["attn"]["out"], b.self_attn.self_attn.project),
                (p["ff_mod"]["adaln"], b.feedforward.ada_ln.linear),
                (p["ff"]["fc1"], b.feedforward.block[0]),
                (p["ff"]["fc2"], b.feedforward.block[3])]
  done = set()
  with torch.no_grad():
    for p, linear in pairs:
      linear.weight.copy_(_tensor(np.asarray(p["kernel"]).T))
      linear.bias.copy_(_tensor(p["bias"]))
      done.update((id(linear.weight), id(linear.bias)))
  missing = [n for n, t in model.named_parameters() if id(t) not in done]
  n_jax = sum(x.size for x in jax.tree.leaves(params))
  n_torch = sum(t.numel() for t in model.parameters())
  if missing or n_jax != n_torch:
    raise RuntimeError(f"--same-init: {n_jax} JAX vs {n_torch} torch params; not copied: "
                       f"{missing}")


def make_draws(batch: int, frames: int, av_dims: av_config.AVDims):
  """(seed, index) -> (t, x0_v, x0_a) as numpy: exactly the draws of `build_av_task`'s loss."""
  @jax.jit
  def draws(key, index):
    k_t, k_v, k_a = jax.random.split(jax.random.fold_in(key, index), 3)
    return (flow.sample_time(k_t, batch),
            jax.random.normal(k_v, (batch, frames, av_dims.visual)),
            jax.random.normal(k_a, (batch, frames, av_dims.audio)))

  return lambda seed, index: jax.device_get(draws(jax.random.PRNGKey(seed), np.int32(index)))


def _tensor(x) -> torch.Tensor:
  return torch.from_numpy(np.array(x, np.float32))  # A writable copy (jax arrays are not).


def torch_loss(model, batch, latent, draws, config, face_dim):
  """The flow-matching loss on the official model: (total, {modality: L1}), torch scalars."""
  b = {k: _tensor(v) for k, v in batch.items()}
  t, x0_v, x0_a = (_tensor(x) for x in draws)
  s = config.loss.sigma_min
  x1 = torch.cat([b["face"], _tensor(latent), b["mel"]], -1)
  x0 = torch.cat([x0_v, x0_a], -1)
  tt = t[:, None, None]
  xt = (1 - (1 - s) * tt) * x0 + tt * x1
  other, kw = None, {}
  if config.data.participant:  # [participant tokens (29) ; SMIRK expression and head (58)]:
    p, n_tok = b["participant"], b["tokens"].shape[-1]  # the wrapper concats in that order.
    other, kw = p[..., :n_tok], dict(other_expr=p[..., n_tok:], other_head=p[..., :0])
  v = model(xt, t, b["tokens"], other, **kw)
  err = (v + (1 - s) * x0 - x1).abs()  # As the official trainer: x1_pred against x1.
  n_v = x0_v.shape[-1]
  errs = {"face": err[..., :face_dim], "head": err[..., face_dim:n_v], "mel": err[..., n_v:]}
  masks = {"face": b["face_mask"] * b["valid"], "head": b["valid"], "mel": b["valid"]}
  weights = {"face": config.loss.face_weight, "head": config.loss.head_weight,
             "mel": config.loss.mel_weight}
  losses = {k: (e.mean(-1) * masks[k]).sum() / masks[k].sum().clamp(min=1.0)
            for k, e in errs.items()}
  return sum(weights[k] * losses[k] for k in losses), losses


class TorchRecipe:
  """avflow_jax's optimiser recipe (optim.py) on torch parameters: AdamW, schedule, clip, EMA."""

  def __init__(self, model, config, schedule):
    o = config.optim
    self.params = list(model.parameters())
    self.opt = torch.optim.AdamW(self.params, lr=0.0, betas=(o.b1, o.b2), eps=1e-8,
                                 weight_decay=o.weight_decay)
    self.schedule, self.clip, self.decay = schedule, o.grad_clip, o.ema_decay
    self.ema = [p.detach().clone() for p in self.params]

  def step(self, loss, step: int) -> float:
    """One update at (0-based) `step`; returns the gradient norm before clipping."""
    self.opt.zero_grad(set_to_none=True)
    loss.backward()
    grads = [p.grad for p in self.params]
    norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])))
    if not (np.isfinite(norm) and np.isfinite(loss.item())):
      raise FloatingPointError(f"torch: non-finite loss or gradient at step {step}")
    if self.clip and self.clip > 0 and norm >= self.clip:  # optax.clip_by_global_norm.
      for g in grads:
        g.mul_(self.clip / norm)
    for group in self.opt.param_groups:
      group["lr"] = float(self.schedule(step))  # optax applies schedule(count) at count.
    self.opt.step()
    d = min(self.decay, (1.0 + step) / (10.0 + step)) if self.decay > 0 else 0.0
    with torch.no_grad():
      for e, p in zip(self.ema, self.params):
        e.mul_(d).add_(p.detach(), alpha=1 - d)
    return norm


def torch_eval(model, val_batches, config, face_dim, weights=None) -> dict[str, float]:
  """Mean validation losses of the torch model (optionally with `weights` swapped in)."""
  saved = None
  if weights is not None:
    saved = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
      for p, w in zip(model.parameters(), weights):
        p.copy_(w)
  model.eval()
  out = dict.fromkeys(KEYS, 0.0)
  with torch.no_grad():
    for batch, latent, draws in val_batches:
      total, losses = torch_loss(model, batch, latent, draws, config, face_dim)
      for k, v in dict(losses, total=total).items():
        out[k] += float(v) / len(val_batches)
  model.train()
  if saved is not None:
    with torch.no_grad():
      for p, w in zip(model.parameters(), saved):
        p.copy_(w)
  return out


def jax_eval(side, params) -> dict[str, float]:
  """`loop.evaluate_loss` (the validation the loop logs) as {face, head, mel, total}."""
  val = loop.evaluate_loss(side["eval_step"], params, side["task"], side["config"], side["mesh"],
                           side["manifest"])
  return {k: val["loss" if k == "total" else "loss_" + k] for k in KEYS}


def setup_jax(config, train_config, data_dir, workdir):
  """The JAX side as the loop builds it: head VAE, task, sharded state and the compiled steps."""
  manifest = manifest_lib.load_manifest(data_dir)
  config_validation.validate(config, manifest, jax.device_count(), jax.process_count())
  vae_model, vae_params = loop.load_or_train_head_vae(config, manifest, data_dir, workdir)
  task = tasks.build_av_task(config, manifest, data_dir, vae_model, vae_params)
  tx, schedule = optim.make_optimizer(config)
  mesh = sharding.make_mesh(config.mesh)
  init_rng = jax.random.PRNGKey(config.seed)
  init_fn, state_sh, _ = loop.make_train_state(task, tx, mesh, init_rng, config.mesh.rules)
  # t and noise follow train_config.seed (--batches-seed); validation stays on config.seed.
  train_step, _ = loop.jit_steps(task, tx, schedule, train_config, mesh, state_sh)
  _, eval_step = loop.jit_steps(task, tx, schedule, config, mesh, state_sh)
  encode = jax.jit(lambda head, valid: vae_model.apply(
      {"params": vae_params}, head, valid > 0, False, method=vae_model.encode)[0])
  av_dims = av_config.AVDims.from_data(manifest["dims"], vae_model.latent_dim, config.data.participant)
  return dict(manifest=manifest, task=task, schedule=schedule, mesh=mesh, state=init_fn(init_rng),
              train_step=train_step, eval_step=eval_step, config=config, av_dims=av_dims,
              encode=lambda b: np.asarray(encode(b["head"], b["valid"])))


def validation_batches(side, draw):
  """The fixed validation crops `loop.evaluate_loss` reads, with their latents, t and noise."""
  config = side["config"]
  rows = rows_lib.process_rows(config.batch_size, sharding.batch_sharding(side["mesh"]))
  it = iter(side["task"].make_dataset(config.data.eval_split, config.seed + 1, rows))
  out = []
  for i in range(config.eval_batches):
    batch = next(it)
    out.append((batch, side["encode"](batch), draw(config.seed + 1, i)))
  return out


def print_curves(steps, curves):
  print("validation loss (raw params)    jax / official torch", flush=True)
  print("  step " + "".join(f"{k:>22}" for k in KEYS), flush=True)
  for i, s in enumerate(steps):
    cells = "".join(f"{curves['jax'][k][i]:>11.4f}/{curves['torch'][k][i]:<10.4f}" for k in KEYS)
    print(f"{s:>6} {cells}", flush=True)


def train_both(args, config, train_config, side, model, face_dim):
  """The side-by-side loop.

  Returns:
    (eval steps, {side: {key: curve}}, {side: final EMA validation losses}, seconds: each side's
    mean step after the first, and its first step, where JAX compiles, as "<side>_first").
  """
  draw = make_draws(config.batch_size, config.data.crop_frames, side["av_dims"])
  val_batches = validation_batches(side, draw)
  recipe = TorchRecipe(model, config, side["schedule"])
  rows = rows_lib.process_rows(config.batch_size, sharding.batch_sharding(side["mesh"]))
  train_iter = iter(side["task"].make_dataset(config.data.train_split, train_config.seed, rows))
  curves = {s: {k: [] for k in KEYS} for s in ("jax", "torch")}
  eval_steps, secs, t_start = [], {"jax": 0.0, "torch": 0.0}, time.time()

  def evaluate(step):
    eval_steps.append(step)
    for name, val in (("jax", jax_eval(side, side["state"]["params"])),
                      ("torch", torch_eval(model, val_batches, config, face_dim))):
      for k in KEYS:
        curves[name][k].append(val[k])
    print(f"step {step} validation: " + " ".join(
        f"{k} {curves['jax'][k][-1]:.4f}/{curves['torch'][k][-1]:.4f}" for k in KEYS), flush=True)

  for step in range(config.num_steps):
    if step % args.eval_every == 0:
      evaluate(step)
    batch = next(train_iter)
    latent, draws = side["encode"](batch), draw(train_config.seed, step)
    t0 = time.perf_counter()
    side["state"], metrics = side["train_step"](side["state"],
                                                sharding.global_batch(batch, side["mesh"]))
    metrics = jax.device_get(metrics)
    t1 = time.perf_counter()
    loss_t, _ = torch_loss(model, batch, latent, draws, config, face_dim)
    norm_t = recipe.step(loss_t, step)
    if step == 0:  # The first JAX step compiles: timed apart.
      secs["jax_first"], secs["torch_first"] = t1 - t0, time.perf_counter() - t1
    else:
      secs["jax"] += t1 - t0
      secs["torch"] += time.perf_counter() - t1
    if not bool(metrics["finite"]):
      raise FloatingPointError(f"jax: non-finite loss or gradient at step {step}")
    done = step + 1
    if done % args.log_every == 0 or done == config.num_steps:
      rate = done / (time.time() - t_start)
      print(f"step {done}/{config.num_steps} train loss jax {float(metrics['loss']):.4f} torch "
            f"{loss_t.item():.4f} | grad norm {float(metrics['grad_norm']):.3f}/{norm_t:.3f} | "
            f"{secs['jax'] / max(step, 1):.3f} s + {secs['torch'] / max(step, 1):.3f} s a step, "
            f"{rate:.2f} "
            f"steps/s, ETA {metric_writer.format_eta((config.num_steps - done) / rate)}",
            flush=True)
  evaluate(config.num_steps)
  ema = {"jax": jax_eval(side, side["state"]["ema"]),
         "torch": torch_eval(model, val_batches, config, face_dim, weights=recipe.ema)}
  n = max(config.num_steps - 1, 1)
  return eval_steps, curves, ema, {k: v if k.endswith("first") else v / n
                                   for k, v in secs.items()}


def parse_args():
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--official", required=True, help="checkout of facebookresearch/av_flow")
  ap.add_argument("--config", default="configs/demo.py")
  ap.add_argument("--steps", type=int, default=None, help="default: the config's num_steps "
                  "(sets config.num_steps, so the cosine schedule spans these steps)")
  ap.add_argument("--eval-every", type=int, default=None, help="default: config.eval_every")
  ap.add_argument("--batches-seed", type=int, default=None,
                  help="seeds data order, crops, t and noise (default: config.seed)")
  ap.add_argument("--same-init", action="store_true",
                  help="copy avflow_jax's initial weights into the torch model")
  ap.add_argument("--workdir", default="/tmp/avflow_bench_official",
                  help="the head VAE is trained into WORKDIR/head_vae unless it is there")
  ap.add_argument("--head-vae-workdir", default=None, help="a trained head-VAE run to reuse")
  ap.add_argument("--log-every", type=int, default=10)
  return ap.parse_args()


def main():
  args = parse_args()
  diffusion = import_official(args.official)
  config = load_config(args.config)
  if args.steps is not None:
    config.num_steps = args.steps
  if args.head_vae_workdir:
    config.head_vae.workdir = os.path.abspath(os.path.expanduser(args.head_vae_workdir))
  args.eval_every = args.eval_every or config.eval_every or config.num_steps
  train_config = config.copy_and_resolve_references()
  if args.batches_seed is not None:
    train_config.seed = args.batches_seed
  if config.compilation_cache_dir:  # As the loop: reruns reuse the compiled steps.
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(config.compilation_cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  t_start = time.time()
  side = setup_jax(config, train_config, loop.resolve_data_dir(config),
                   os.path.abspath(os.path.expanduser(args.workdir)))
  model = build_torch_model(diffusion, config, side["av_dims"])
  if args.same_init:
    copy_jax_params(side["state"]["params"], model)
  n_jax = sum(x.size for x in jax.tree.leaves(side["state"]["params"]))
  n_torch = sum(p.numel() for p in model.parameters())
  print(f"params jax {n_jax:,}, official torch {n_torch:,}; {config.num_steps} steps, batch "
        f"{config.batch_size} x {config.data.crop_frames}, eval every {args.eval_every}"
        f"{', same init' if args.same_init else ''}; torch threads {torch.get_num_threads()}",
        flush=True)
  setup_s = time.time() - t_start
  steps, curves, ema, step_s = train_both(args, config, train_config, side, model,
                                          side["av_dims"].face)
  print_curves(steps, curves)
  diff = max(abs(a - b) / max(abs(a), 1e-12)
             for k in KEYS for a, b in zip(curves["jax"][k], curves["torch"][k]))
  print(f"max relative difference jax vs torch over the curves: {diff:.2e}", flush=True)
  print(json.dumps({
      "config": args.config, "steps": config.num_steps, "eval_every": args.eval_every,
      "batches_seed": train_config.seed, "same_init": args.same_init,
      "official": os.path.abspath(args.official), "params": {"jax": n_jax, "torch": n_torch},
      "batch": config.batch_size, "crop_frames": config.data.crop_frames,
      "eval_steps": steps, "val_jax": curves["jax"], "val_torch": curves["torch"],
      "val_ema_final": ema, "max_rel_diff": diff,
      "train_step_s": step_s, "setup_s": round(setup_s, 1),
      "wall_s": round(time.time() - t_start, 1),
      "device": jax.devices()[0].device_kind, "jax": jax.__version__,
      "torch": torch.__version__}))


if __name__ == "__main__":
  main()
