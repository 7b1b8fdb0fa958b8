"""Training loop for the entropy model (`train.task="entropy"`) and BLT (`train.task="blt"`).

One code path from a 2-core laptop to a pod: a (data, fsdp, tensor) mesh, parameters and optimiser
state sharded from birth by logical-axis rules, one `jax.jit` train step with in/out shardings and
the state donated, `jax.distributed` when launched as several processes, per-process input slices
assembled into global arrays with `jax.make_array_from_process_local_data`.

How the BLT step picks patches: `batch["start"]` if the data already carries patch starts
(precomputed), else `losses.train_patch_starts` inside the jitted step: the config's patcher
(`model.patcher`: entropy mode runs the frozen entropy model from `train.entropy_checkpoint`, or
static / space / byte), plus a forced start after every EOS. Rows are cut at the static patch
budget `max_patches` (`train_config.resolve_max_patches`).

Per step: metrics are fetched one step late (dispatch stays asynchronous), a non-finite loss
stops the run (no checkpoint of the bad state), SIGTERM / SIGINT save and exit, and every
`train.ckpt_every` steps an async checkpoint (state + grain iterator) is written. Held-out bpb
per domain every `train.eval_every` steps and at the end. Logs: WORKDIR/metrics.jsonl,
TensorBoard events in WORKDIR/tb, a tqdm bar with ETA. The final parameters are exported as a
bltjax inference checkpoint to WORKDIR/export (by all processes together in a multi-process run;
`export_only` exports a workdir's latest checkpoint). WORKDIR may be a URL (gs://...); with several
processes it must be one directory they all see (checked at start, docs/multihost.md).

Longer than 600 lines: the training loop, its checkpoint/resume, multi-host set-up and signal
handling share one state machine; issue-sized pieces of it are already in their own modules.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bltjax import multihost, paths
from bltjax.config import BOS_ID, EOS_ID, OFFSET, BLTConfig, ConfigError
from bltjax.modeling import hashing, model, sharding
from bltjax.training import checkpoint, diffusion, losses, optim, warm_start
from bltjax.training.train_config import Resolved, resolve

if TYPE_CHECKING:  # grain is imported where an iterator is built: a step needs none
  import grain

TRAINABLE = {"entropy": ("entropy_model",), "blt": model.BLT_KEYS}
BATCH_KEYS = ("ids", "valid", "doc_ids", "start", "score")
LN2 = math.log(2.0)


# ------------------------------------------------------------------------------------------------
# Processes.


def maybe_initialize_distributed(coordinator_address: str | None = None,
                                 num_processes: int | None = None,
                                 process_id: int | None = None, auto: bool = False) -> str | None:
  """`jax.distributed.initialize` when this is one of several processes (`bltjax.multihost`).

  Explicit arguments win; otherwise `JAX_COORDINATOR_ADDRESS`, `BLTJAX_NUM_PROCESSES` and
  `BLTJAX_PROCESS_ID` are read; `auto=True` lets JAX detect the cluster; without either, a
  TPU pod / SLURM / Open MPI environment with several processes is detected.
  """
  return multihost.maybe_initialize_distributed(coordinator_address, num_processes, process_id,
                                                auto)


# ------------------------------------------------------------------------------------------------
# Data.


class _SyntheticRows:
  """Deterministic byte documents from a seeded sparse bigram chain (tests and benchmarks).

  Global batch i, row r is a function of (seed, i, r) only, so any process slice of any batch is
  reproducible and a 2-process run sees exactly the rows of a 1-process run.
  """

  def __init__(self, seed: int, seq_len: int):
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ,.\n", np.uint8)
    self._succ = rng.choice(alphabet, size=(256, 4))  # 4 likely successors per byte
    self._seed, self._s = seed, seq_len

  def row(self, i: int, r: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self._seed, i, r])
    s = self._s
    ids = np.zeros(s, np.int32)
    doc = np.zeros(s, np.int32)
    t, piece = 0, 0
    while t < s:
      n = int(rng.integers(8, max(9, s)))  # document bytes
      piece += 1
      prev = int(rng.integers(97, 123))
      choice = rng.integers(0, 4, size=n)
      body = np.empty(n, np.int32)
      for j in range(n):
        prev = int(self._succ[prev, choice[j]])
        body[j] = prev + OFFSET
      d = np.concatenate([[BOS_ID], body, [EOS_ID]])[: s - t]
      ids[t : t + len(d)] = d
      doc[t : t + len(d)] = piece
      t += len(d)
    return {"ids": ids, "valid": np.ones(s, bool), "doc_ids": doc}


def _synthetic_batch_fn(seed: int, seq_len: int, batch_size: int, process_index: int,
                        process_count: int):
  rows = _SyntheticRows(seed, seq_len)
  local = batch_size // process_count
  first = process_index * local

  def make(i):
    rs = [rows.row(int(i), first + r) for r in range(local)]
    return {k: np.stack([x[k] for x in rs]) for k in rs[0]}

  return make


def synthetic_iterator(seed: int, seq_len: int, batch_size: int, process_index: int = 0,
                       process_count: int = 1) -> grain.DatasetIterator:
  """A checkpointable grain iterator over synthetic global batches (this process's rows)."""
  import grain

  make = _synthetic_batch_fn(seed, seq_len, batch_size, process_index, process_count)
  return iter(grain.MapDataset.range(2**31 - 1).map(make).to_iter_dataset())


def synthetic_batches(seed: int, seq_len: int, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
  """The batches of `synthetic_iterator` (one process), without grain (benchmarks)."""
  make = _synthetic_batch_fn(seed, seq_len, batch_size, 0, 1)
  i = 0
  while True:
    yield make(i)
    i += 1


def make_data_iterator(r: Resolved, process_index: int, process_count: int
                       ) -> grain.DatasetIterator:
  """This process's training batches: the data layer's pipeline, or `data.source="synthetic"`."""
  tc = r.train
  if r.data.get("source") == "synthetic":
    return synthetic_iterator(tc.seed, tc.seq_len, tc.batch_size, process_index, process_count)
  from bltjax.data import pipeline

  return pipeline.make_train_iterator(
    r.data, seq_len=tc.seq_len, batch_size=tc.batch_size // process_count, seed=tc.seed,
    process_index=process_index, process_count=process_count)


def window_document(ids: np.ndarray, seq_len: int, stride: int
                    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """Evaluation windows over one document: (ids of the window, which targets it scores).

  The first window scores every target; each later window starts `stride` ids further and
  scores only targets no earlier window scored, so they have >= seq_len - stride ids of context
  (docs/choices.md, bits per byte). Every target ids[1:] is scored exactly once.
  """
  n = len(ids)
  o, done = 0, 1
  while True:
    w = ids[o : o + seq_len]
    score = np.zeros(len(w), bool)
    score[max(done - o, 1) :] = True
    yield w, score
    done = o + len(w)
    if done >= n:
      return
    o += stride


def eval_sets(r: Resolved) -> dict[str, list[dict[str, np.ndarray]]]:
  """Held-out batches per domain: [{ids, valid, doc_ids, score}] of global batch size.

  Each domain contributes its first `train.eval_windows` windows (in stored document order), so
  the same text is scored at every evaluation and across runs.
  """
  tc = r.train
  if not tc.eval_windows:
    return {}
  s, b = tc.seq_len, tc.eval_batch_size or tc.batch_size
  stride = max(1, s // 2)
  docs: dict[str, list[np.ndarray]] = {}
  if r.data.get("source") == "synthetic":
    rows = _SyntheticRows(tc.seed + 1_000_003, s)
    docs["synthetic"] = [rows.row(0, i)["ids"] for i in range(tc.eval_windows)]
  else:
    from bltjax.data import pipeline

    for dom in pipeline.heldout_domains(r.data):
      docs[dom] = [d["ids"] for d in pipeline.make_eval_iterator(
        r.data, domain=dom, max_docs=tc.eval_windows)]
  out = {}
  for dom, dlist in docs.items():
    wins = []
    for d in dlist:
      for w, sc in window_document(np.asarray(d, np.int32), s, stride):
        wins.append((w, sc))
        if len(wins) == tc.eval_windows:
          break
      if len(wins) == tc.eval_windows:
        break
    n_batches = -(-len(wins) // b)
    batches = []
    for k in range(n_batches):
      ids = np.zeros((b, s), np.int32)
      score = np.zeros((b, s), bool)
      valid = np.zeros((b, s), bool)
      for j, (w, sc) in enumerate(wins[k * b : (k + 1) * b]):
        ids[j, : len(w)], score[j, : len(w)], valid[j, : len(w)] = w, sc, True
      batches.append({"ids": ids, "valid": valid, "doc_ids": valid.astype(np.int32),
                      "score": score})
    out[dom] = batches
  return out


# ------------------------------------------------------------------------------------------------
# Logging.


class MetricWriter:
  """JSONL (every process-0 record) + TensorBoard scalars in the workdir (a path or a URL)."""

  def __init__(self, workdir: epath.Path, enabled: bool, tensorboard: bool):
    self.enabled = enabled
    self._tb = None
    self._f = None
    if enabled:
      workdir.mkdir(parents=True, exist_ok=True)
      self._f = paths.LineLog(workdir / "metrics.jsonl")
      if tensorboard:
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(workdir / "tb"))

  def write(self, step: int, record: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    rec = {"step": int(step), **{k: _py(v) for k, v in record.items()}}
    self._f.write(json.dumps(rec) + "\n")
    if self._tb is not None:
      for k, v in rec.items():
        if k != "step" and isinstance(v, int | float) and math.isfinite(v):
          self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self._f is not None:
      self._f.close()
    if self._tb is not None:
      self._tb.close()


def _py(v: Any) -> Any:
  if isinstance(v, np.generic | np.ndarray):
    return v.item()
  return v


def derived(m: Mapping[str, float]) -> dict[str, float]:
  """bpb and friends from summed loss metrics."""
  out = {}
  if m.get("n_bytes"):
    out["bpb"] = m["nll_bytes_sum"] / m["n_bytes"] / LN2
    out["bpb_with_eos"] = (m["nll_bytes_sum"] + m.get("nll_eos_sum", 0.0)) / m["n_bytes"] / LN2
  if m.get("n_patches"):
    out["mean_patch_len"] = (m["n_tokens"] - m.get("n_truncated", 0.0)) / m["n_patches"]
  if m.get("n_tokens") and "n_truncated" in m:
    out["truncated_frac"] = m["n_truncated"] / m["n_tokens"]
  return out


# ------------------------------------------------------------------------------------------------
# The run.


def get_loss_fn(cfg: BLTConfig, task: str, max_patches: int | None = None) -> losses.LossFn:
  """The `loss_fn(params, cfg, batch, rng)` for a task; BLT-D when `cfg.diffusion.enabled`."""
  if task == "entropy":
    return losses.entropy_loss
  if task != "blt":
    raise ValueError(f"train.task: unknown task {task!r}")
  if cfg.diffusion.enabled:
    fn = diffusion.bltd_loss
  else:
    fn = losses.blt_loss
  if max_patches is not None and "max_patches" in inspect.signature(fn).parameters:
    return lambda p, c, b, r: fn(p, c, b, r, max_patches=max_patches)
  return fn


def hash_row_gradient(cfg: BLTConfig) -> optim.RowGradient | None:
  """BLT's hash tables as an `optim.RowGradient` (None without tables): the rows gathered before
  the gradient, theirs scattered into the fp32 accumulator, one table at a time
  (`hashing.hash_rows_per_table`). Not for BLT-D, whose block stream may embed other ids
  (`block_input="encoder_states"`)."""
  if not cfg.hash.num_tables:
    return None
  return optim.RowGradient(model.HASH_TABLE_PATH,
                           lambda mb: model.hash_ids(cfg, mb["ids"], mb["valid"]),
                           hashing.hash_rows_per_table, hashing.add_hash_rows_per_table)


@dataclasses.dataclass
class Trainer:
  """Everything a run needs, built by `Trainer.create` (no compilation yet)."""

  r: Resolved
  cfg: BLTConfig
  workdir: epath.Path
  mesh: jax.sharding.Mesh
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  state_shardings: Any
  abstract_state: Any
  frozen: Any
  frozen_shardings: Any
  loss_fn: Any
  warm_start_counts: dict[str, int] | None = None

  @classmethod
  def create(cls, config: ml_collections.ConfigDict | Mapping[str, Any],
             workdir: str | os.PathLike,
             devices: list[Any] | None = None, entropy_params: Any = None) -> Trainer:
    """`entropy_params`: the frozen patcher's parameters (arrays, or `ShapeDtypeStruct`s to
    only lower and compile the step) instead of loading `train.entropy_checkpoint`."""
    devices = devices if devices is not None else jax.devices()
    r = resolve(config, len(devices), jax.process_count())
    cfg, tc = r.model, r.train
    mesh = sharding.make_mesh(r.mesh_shape, devices)
    frozen, frozen_sh = {}, {}
    if tc.task == "blt" and cfg.patcher.mode == "entropy":
      if entropy_params is None:
        entropy_params = _load_entropy_params(cfg, tc.entropy_checkpoint, mesh)
      frozen, frozen_sh = _place_entropy_params(cfg, entropy_params, mesh, r.rules)
    keys = TRAINABLE[tc.task]
    param_sh = model.param_shardings(cfg, mesh, r.rules, keys)
    abs_params = model.abstract_sharded_params(cfg, mesh, r.rules, keys)
    tx, sched = optim.make_optimizer(tc)
    repl = sharding.replicated(mesh)
    abs_opt = jax.eval_shape(tx.init, abs_params)
    # Adam's moments take their params' shardings, the counters are replicated. (XLA's own
    # placement, from compiling tx.init, replicates mu/nu: zeros_like carries no sharding, so
    # fsdp would not shard 2/3 of the state.)
    moment_kind = "device"
    if tc.offload_optimizer:
      moment_kind = "pinned_host"
      kinds = {m.kind for m in devices[0].addressable_memories()}
      if moment_kind not in kinds:
        raise ConfigError(f"train.offload_optimizer: {devices[0].platform} devices have no "
                          f"{moment_kind!r} memory (they have {sorted(kinds)})")
    opt_sh = optax.tree_map_params(tx, lambda _, sh: sh.with_memory_kind(moment_kind), abs_opt,
                                   param_sh, transform_non_params=lambda _: repl,
                                   is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))
    state_sh = {"params": param_sh, "opt_state": opt_sh, "step": repl}
    abstract = {
      "params": abs_params,
      "opt_state": checkpoint.abstract_tree(abs_opt, opt_sh),
      "step": jax.ShapeDtypeStruct((), jnp.int32, sharding=repl),
    }
    loss_fn = get_loss_fn(cfg, tc.task, r.max_patches)
    return cls(r, cfg, paths.as_path(workdir, "--workdir"), mesh, tx, sched, state_sh, abstract,
               frozen, frozen_sh, loss_fn)

  # -- state ---------------------------------------------------------------------------------

  def init_state(self) -> Any:
    """Fresh state, created directly in its shards; `train.init_from_blt` then copies in a
    trained BLT's weights (`bltjax.training.warm_start`; the optimiser moments start at zero
    either way).
    """
    keys, tx, cfg = TRAINABLE[self.r.train.task], self.tx, self.cfg

    def init(rng):
      p = model.init_params(cfg, rng)
      p = {k: p[k] for k in keys}
      return {"params": p, "opt_state": tx.init(p), "step": jnp.zeros((), jnp.int32)}

    with sharding.use_mesh(self.mesh):
      state = jax.jit(init, out_shardings=self.state_shardings)(jax.random.key(self.r.train.seed))
      src = self.r.train.init_from_blt
      if src:
        params, self.warm_start_counts = warm_start.load(
          src, cfg, state["params"], keys, sharding.replicated(self.mesh))
        state = dict(state, params=params)
    return state

  def full_params(self, params: Any) -> Any:
    return {**params, **self.frozen}

  # -- batches -------------------------------------------------------------------------------

  def batch_sharding(self, ndim: int) -> NamedSharding:
    return sharding.batch_sharding(self.mesh, ndim, self.r.rules)

  def to_global(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
    """Process-local rows -> global arrays with the batch axis over the data mesh axes."""
    out = {}
    for k in BATCH_KEYS:
      if k in batch:
        v = np.asarray(batch[k])
        out[k] = jax.make_array_from_process_local_data(self.batch_sharding(v.ndim), v)
    return out

  # -- steps ---------------------------------------------------------------------------------

  def make_train_step(self, split: bool | None = None):
    """The jitted step `step(state, frozen, batch) -> (state, metrics)`; `split`: as two programs
    (`SplitStep`; None = when the optimizer is offloaded, which needs it)."""
    cfg, tc, tx, sched, loss_fn = self.cfg, self.r.train, self.tx, self.schedule, self.loss_fn
    mesh, rules, opt_shardings = self.mesh, self.r.rules, self.state_shardings["opt_state"]
    base_key = jax.random.key(tc.seed)

    def constrain(y):
      spec = P(None, rules.batch, *([None] * (y.ndim - 2)))
      return jax.lax.with_sharding_constraint(y, NamedSharding(mesh, spec))

    hash_rows = (hash_row_gradient(cfg)
                 if tc.task == "blt" and not cfg.diffusion.enabled else None)

    def gradient_sums(params, step, frozen, batch):
      """The microbatch loop: `optim.gradient_sums` of the whole batch."""

      def micro_loss(p, mb, r):
        full = {**p, **frozen}
        mb = dict(mb)
        if tc.task == "blt" and "start" not in mb:
          mb["start"] = losses.train_patch_starts(full, cfg, mb)
        return loss_fn(full, cfg, mb, r)

      rng = jax.random.fold_in(base_key, step)
      return optim.gradient_sums(micro_loss, params, batch, rng, tc.grad_accum, constrain,
                                 rows=hash_rows)

    def update(state, *sums):
      loss, metrics, grads = optim.normalize(*sums, state["params"])
      opt_state = state["opt_state"]
      if tc.offload_optimizer:  # the moments come in from host memory; out_shardings send them back
        opt_state = jax.tree.map(lambda x, sh: jax.device_put(x, sh.with_memory_kind("device")),
                                 opt_state, opt_shardings)
      updates, opt_state = tx.update(grads, opt_state, state["params"])
      params = optax.apply_updates(state["params"], updates)
      metrics = dict(metrics, loss=loss, grad_norm=_global_norm(grads),
                     lr=sched(state["step"]))
      return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics

    sh = self.state_shardings
    if split or (split is None and tc.offload_optimizer):
      # Two programs, so that the microbatch loop's peak never holds the moments: in one program
      # XLA starts their copies to the device before the loop (compiled for TPU: a higher peak
      # than not offloading; docs/accelerators.md), also behind an optimization_barrier.
      # The first returns the fp32 accumulator itself (no gradient-sized quotient next to it).
      return SplitStep(
        jax.jit(gradient_sums,
                in_shardings=(sh["params"], sh["step"], self.frozen_shardings, None),
                out_shardings=(None, None, sh["params"], None)),
        jax.jit(update, in_shardings=(sh, None, None, sh["params"], None),
                out_shardings=(sh, None), donate_argnums=(0, 3)))

    def step_fn(state, frozen, batch):
      return update(state, *gradient_sums(state["params"], state["step"], frozen, batch))

    # The batch arrives as global arrays already split over the data axes (`to_global`).
    return jax.jit(step_fn, in_shardings=(sh, self.frozen_shardings, None),
                   out_shardings=(sh, None), donate_argnums=(0,))

  def make_eval_step(self):
    cfg, tc, loss_fn = self.cfg, self.r.train, self.loss_fn

    def eval_fn(params, frozen, batch):
      full = {**params, **frozen}
      batch = dict(batch)
      if tc.task == "blt" and "start" not in batch:
        batch["start"] = losses.train_patch_starts(full, cfg, batch)
      _, metrics = loss_fn(full, cfg, batch, jax.random.key(0))
      return {k: v for k, v in metrics.items() if optim.is_sum_metric(k)}

    return jax.jit(eval_fn, in_shardings=(self.state_shardings["params"], self.frozen_shardings,
                                          None))

  def evaluate(self, eval_step, params: Any, sets: Mapping[str, list]) -> dict[str, float]:
    out: dict[str, float] = {}
    pi, pc = jax.process_index(), jax.process_count()
    for dom, batches in sets.items():
      acc: dict[str, float] = {}
      for b in batches:
        rows = b["ids"].shape[0] // pc
        local = {k: v[pi * rows : (pi + 1) * rows] for k, v in b.items()}
        m = jax.device_get(eval_step(params, self.frozen, self.to_global(local)))
        for k, v in m.items():
          acc[k] = acc.get(k, 0.0) + float(v)
      for k, v in derived(acc).items():
        out[f"eval/{dom}/{k}"] = v
    bpbs = [v for k, v in out.items() if k.endswith("/bpb")]
    if bpbs:
      out["eval/mean_bpb"] = float(np.mean(bpbs))
    return out

  def export(self, params: Any, step: int) -> epath.Path:
    meta = {"task": self.r.train.task, "step": int(step), "train": dataclasses.asdict(self.r.train)}
    return checkpoint.export_params(self.workdir / "export", self.full_params(params), self.cfg,
                                    meta)


class SplitStep:
  """A training step run as two programs: `gradients(params, step, frozen, batch)` (the
  microbatch loop's `optim.gradient_sums`) then `update(state, *sums)`. Called, lowered and
  compiled as one jitted step is: `step(state, frozen, batch)`, `step.lower(...).compile()`; the
  compiled pair's `memory_analysis()` is the program with the larger peak (host bytes: the
  larger of each) and its `cost_analysis()` the sum."""

  def __init__(self, gradients, update):
    self.gradients, self.update = gradients, update

  def __call__(self, state, frozen, batch):
    return self.update(state, *self.gradients(state["params"], state["step"], frozen, batch))

  def lower(self, state, frozen, batch) -> SplitStep:
    g = self.gradients.lower(state["params"], state["step"], frozen, batch)
    return SplitStep(g, self.update.lower(state, *g.out_info))

  def compile(self) -> SplitStep:
    return SplitStep(self.gradients.compile(), self.update.compile())

  def memory_analysis(self):
    import types

    ms = [self.gradients.memory_analysis(), self.update.memory_analysis()]
    peak = lambda m: (m.argument_size_in_bytes + m.output_size_in_bytes  # noqa: E731
                      - m.alias_size_in_bytes + m.temp_size_in_bytes)
    top = max(ms, key=peak)
    out = {k: getattr(top, k) for k in ("argument_size_in_bytes", "output_size_in_bytes",
                                        "alias_size_in_bytes", "temp_size_in_bytes",
                                        "generated_code_size_in_bytes")}
    for k in ("host_argument_size_in_bytes", "host_temp_size_in_bytes"):
      out[k] = max(getattr(m, k, 0) for m in ms)
    return types.SimpleNamespace(**out)

  def cost_analysis(self):
    out: dict[str, float] = {}
    for ca in (self.gradients.cost_analysis(), self.update.cost_analysis()):
      ca = (ca[0] if ca else {}) if isinstance(ca, list | tuple) else (ca or {})
      for k, v in ca.items():
        if k in ("flops", "bytes accessed"):
          out[k] = out.get(k, 0.0) + float(v)
    return out


def _global_norm(tree: Any) -> jax.Array:
  # optax >= 0.2.5 has optax.tree.norm; optax.global_norm is its deprecated alias.
  tree_ns = getattr(optax, "tree", None)
  return tree_ns.norm(tree) if tree_ns is not None else optax.global_norm(tree)


def _same_stack(a, b) -> bool:
  return a is not None and b is not None and \
    dataclasses.replace(a, name="") == dataclasses.replace(b, name="")


def _load_entropy_params(cfg: BLTConfig, path: str, mesh) -> Any:
  """Frozen entropy-model params from a bltjax checkpoint (an entropy run's export), replicated
  over `mesh` until `_place_entropy_params` shards them."""
  from bltjax import weights

  if not path:
    raise ConfigError("train.entropy_checkpoint: entropy patching needs a trained entropy model")
  if not paths.as_path(path, "train.entropy_checkpoint").is_dir():
    raise ConfigError(f"train.entropy_checkpoint: {path} is not a directory")
  ecfg = weights.load_config(path)
  if not _same_stack(ecfg.entropy, cfg.entropy):
    raise ConfigError(f"model.entropy: {cfg.entropy} differs from the entropy model in "
                      f"train.entropy_checkpoint {path}: {ecfg.entropy}")
  _, params = weights.load_checkpoint(path, shardings=sharding.replicated(mesh))
  if "entropy_model" not in params:
    raise ConfigError(f"train.entropy_checkpoint: {path} holds no entropy_model parameters")
  return params["entropy_model"]


def _place_entropy_params(cfg: BLTConfig, params: Any, mesh, rules) -> tuple[Any, Any]:
  """({"entropy_model": params} sharded by the rules, its shardings). Sharded like the trainable
  local models (0.37 GiB replicated at 1B)."""
  want = model.abstract_params(cfg)["entropy_model"]
  got = jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), params)
  if got != jax.tree.map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), want):
    raise ConfigError(f"entropy_params: shapes differ from model.entropy {cfg.entropy}")
  shards = model.param_shardings(cfg, mesh, rules, ("entropy_model",))
  tree = {"entropy_model": params}
  if all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(params)):
    frozen = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          tree, shards)
  else:
    frozen = jax.device_put(tree, shards)
  return frozen, shards


def _fmt(m: Mapping[str, Any]) -> str:
  keys = ("loss", "bpb", "lr", "grad_norm", "bytes_per_s", "mean_patch_len")
  return " ".join(f"{k}={m[k]:.4g}" for k in keys if k in m)


def train_and_evaluate(config: ml_collections.ConfigDict | Mapping[str, Any],
                       workdir: str | os.PathLike, log=print) -> dict[str, Any]:
  """Trains to `train.steps` (resuming from WORKDIR/checkpoints), evaluates, exports.

  Returns:
    {"step", "train": last logged train metrics, "eval": last held-out metrics,
     "export": path or None, "preempted": bool}.
  """
  t_start = time.time()
  tr = Trainer.create(config, workdir)
  r, tc, cfg = tr.r, tr.r.train, tr.cfg
  pi, pc = jax.process_index(), jax.process_count()
  main = pi == 0
  counts = {k: v for k, v in _num_params(cfg, tc.task).items()}
  log(multihost.process_line("[bltjax.train]"))  # every process: its index, its devices
  # Checkpoints are written by every process into one directory: stop now, not at the first
  # save, when the processes do not share it.
  multihost.check_shared_dir(tr.workdir, "--workdir")
  if main:
    log(f"[bltjax.train] task={tc.task} mesh={dict(tr.mesh.shape)} processes={pc} "
        f"params={counts} max_patches={r.max_patches} patcher={cfg.patcher.mode} "
        f"workdir={tr.workdir}")
  writer = MetricWriter(tr.workdir, main, tc.tensorboard)
  data_iter = make_data_iterator(r, pi, pc)
  ckpt = checkpoint.TrainCheckpointer(tr.workdir / "checkpoints", tc.keep, tc.async_checkpoint)
  meta = {"model": cfg.to_dict(), "train": dataclasses.asdict(tc), "scan_layers": False,
          "mesh_shape": list(r.mesh_shape), "max_patches": r.max_patches}
  latest = ckpt.latest_step()
  if latest is not None:
    state = ckpt.restore(latest, tr.abstract_state, data_iter)
    if main:
      log(f"[bltjax.train] resumed from {ckpt.directory}/{latest}")
  else:
    state = tr.init_state()
    if tc.init_from_blt and main:
      log(f"[bltjax.train] initialised from {tc.init_from_blt}: {tr.warm_start_counts}")
  step = int(jax.device_get(state["step"]))
  # Several processes: compile, then line up, before each program's first cross-process run.
  train_step = multihost.first_call_barrier(tr.make_train_step(), "train_step")
  eval_step = multihost.first_call_barrier(tr.make_eval_step(), "eval_step")
  sets = eval_sets(r)
  bar = None
  if main and tc.progress:
    from tqdm import tqdm

    bar = tqdm(total=tc.steps, initial=step, desc=f"train {tc.task}", unit="step",
               dynamic_ncols=True, file=sys.stderr)

  last_train: dict[str, Any] = {}
  last_eval: dict[str, Any] = {}
  window: dict[str, float] = {}
  t_window = time.time()
  pending = None  # (step, device metrics) of the previous step: fetched one step late
  preempted = False

  def consume(pending_step: int, m_dev: Any) -> None:
    nonlocal window, t_window, last_train
    m = {k: float(v) for k, v in jax.device_get(m_dev).items()}
    if not math.isfinite(m["loss"]):
      writer.write(pending_step, {"event": "nan", "loss": m["loss"]})
      raise FloatingPointError(f"non-finite loss {m['loss']} at step {pending_step}; stopping "
                               f"(the last good checkpoint is in {ckpt.directory})")
    for k, v in m.items():
      if optim.is_sum_metric(k):
        window[k] = window.get(k, 0.0) + v
    window["steps"] = window.get("steps", 0) + 1
    if bar is not None:
      bar.update(1)
    if pending_step % tc.log_every == 0 or pending_step == tc.steps:
      dt = max(time.time() - t_window, 1e-9)
      rec = {"loss": m["loss"], "lr": m["lr"], "grad_norm": m["grad_norm"],
             "accuracy": m.get("accuracy", float("nan")), **derived(window),
             "bytes_per_s": window.get("n_tokens", 0.0) / dt,
             "steps_per_s": window["steps"] / dt}
      if window.get("n_patches"):
        rec["patches_per_s"] = window["n_patches"] / dt
      rec = {f"train/{k}" if k not in ("lr",) else k: v for k, v in rec.items()}
      writer.write(pending_step, rec)
      last_train = {k.removeprefix("train/"): v for k, v in rec.items()}
      if bar is not None:
        bar.set_postfix_str(_fmt(last_train))
      window, t_window = {}, time.time()

  def run_eval(at: int) -> None:
    nonlocal last_eval
    if not sets:
      return
    last_eval = tr.evaluate(eval_step, state["params"], sets)
    writer.write(at, last_eval)
    if main:
      msg = " ".join(f"{k.removeprefix('eval/')}={v:.4f}" for k, v in last_eval.items()
                     if k.endswith("bpb"))
      (bar.write if bar is not None else log)(f"[eval step {at}] {msg}")

  def preemption_requested(guard, at: int) -> bool:
    if pc == 1:
      return guard.requested is not None
    if at % tc.log_every:
      return False  # a cross-process vote costs a sync; hold it only at log steps
    from jax.experimental import multihost_utils

    flag = np.int32(guard.requested is not None)
    return bool(np.any(multihost_utils.process_allgather(flag)))

  try:
    with sharding.use_mesh(tr.mesh), checkpoint.PreemptionGuard() as guard:
      while step < tc.steps:
        batch = tr.to_global(next(data_iter))
        state, metrics = train_step(state, tr.frozen, batch)
        step += 1
        if pending is not None:
          consume(*pending)
        pending = (step, metrics)
        if tc.step_delay_s:
          time.sleep(tc.step_delay_s)
        if tc.eval_every and step % tc.eval_every == 0 and step < tc.steps:
          consume(*pending)
          pending = None
          run_eval(step)
        if preemption_requested(guard, step):
          ckpt.save(step, state, data_iter, meta, wait=True)
          if main:
            log(f"[bltjax.train] signal {guard.requested}: saved step {step}, exiting")
          preempted = True
          break
        if tc.ckpt_every and step % tc.ckpt_every == 0:
          ckpt.save(step, state, data_iter, meta)
      if pending is not None:
        consume(*pending)
      export_path = None
      if not preempted:
        ckpt.save(step, state, data_iter, meta, wait=True)
        run_eval(step)
        if tc.export:  # every process writes its shards; process 0 publishes the directory
          export_path = tr.export(state["params"], step)
  finally:
    ckpt.close()
    if bar is not None:
      bar.close()
    writer.close()
  if main:
    log(f"[bltjax.train] step {step} done in {time.time() - t_start:.1f}s "
        f"{_fmt(last_train)} export={export_path}")
  return {"step": step, "train": last_train, "eval": last_eval,
          "export": str(export_path) if export_path else None, "preempted": preempted,
          "params": state["params"]}


def export_only(config: ml_collections.ConfigDict | Mapping[str, Any],
                workdir: str | os.PathLike, log=print) -> epath.Path:
  """Exports the latest training checkpoint of `workdir` (from one process or several).

  The checkpoint may come from any mesh or process count: restore re-shards onto this one.
  """
  tr = Trainer.create(config, workdir)
  ckpt = checkpoint.TrainCheckpointer(tr.workdir / "checkpoints")
  step = ckpt.latest_step()
  if step is None:
    raise FileNotFoundError(f"{ckpt.directory}: no training checkpoint to export")
  state = ckpt.restore(step, tr.abstract_state)
  ckpt.close()
  path = tr.export(state["params"], step)
  log(f"[bltjax.train] exported step {step} to {path}")
  return path


def _num_params(cfg: BLTConfig, task: str) -> dict[str, int]:
  from bltjax.config import num_params

  n = num_params(cfg)
  if task == "entropy":
    return {"entropy": n["entropy"]}
  return {k: v for k, v in n.items() if k != "entropy" and k != "total"}
