"""Training: configs, the loss contract, SPMD equivalence, gradient accumulation, 2 processes.

Tolerances (fp32 on CPU): a sharded computation sums in a different order than one device, so
losses agree to rtol 1e-6 and gradients to rtol 2e-5 / atol 1e-7 (measured differences are
~1e-7 relative); anything larger is a placement bug, not rounding.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax.config import BOS_ID, EOS_ID, ConfigError
from bltjax.modeling import model, sharding
from bltjax.training import losses, optim, train
from bltjax.training.train_config import base_config, resolve

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import tiny_train_config  # noqa: E402

LOSS_RTOL = 1e-6
GRAD_RTOL, GRAD_ATOL = 2e-5, 1e-7


def load(name: str):
  spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


# ------------------------------------------------------------------------------------------------
# Configs.

CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py"))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_constructs(name):
  c = load(name)
  if c.train.task == "blt" and c.model.patcher.mode == "entropy":
    c.train.entropy_checkpoint = "/some/entropy/export"
  r = resolve(c, 8)
  assert r.max_patches >= 2
  assert r.train.batch_size % 8 == 0 or r.mesh_shape != (1, 8, 1)


def test_bench_20m_geometry():
  r = resolve(load("bench_20m"), 1)
  m = r.model
  assert (m.encoder.n_layers, m.encoder.dim, m.encoder.n_heads) == (1, 256, 4)
  assert (m.global_.n_layers, m.global_.dim, m.global_.n_heads) == (4, 512, 8)
  assert (m.decoder.n_layers, m.decoder.dim, m.decoder.n_heads) == (4, 256, 4)
  assert (m.entropy.n_layers, m.entropy.dim, m.entropy.n_heads) == (2, 256, 4)
  assert m.cross_attn_k == 2 and m.hash.group_sizes == (3, 4, 5, 6, 7, 8)
  assert m.hash.vocab == 50002 and m.hash.nb_functions == 1
  assert m.encoder.ffn_dim is None and m.encoder.hidden_dim == 768  # official rounding rule
  assert m.global_.hidden_dim == 1536
  assert (r.train.batch_size, r.train.seq_len, m.patcher.mode, m.patcher.patch_size) == \
    (8, 512, "static", 4.0)


def test_7b_has_k4_and_projection():
  c = load("blt_7b")
  c.train.entropy_checkpoint = "x"
  m = resolve(c, 8).model
  assert m.cross_attn_k == 4 and m.needs_global_projection


@pytest.mark.parametrize("edit,key", [
  (lambda c: c.mesh.update(shape=(2, 2, 1)), r"^mesh.shape: product"),
  (lambda c: c.mesh.update(shape=(3, -1, 1)), r"^mesh.shape: .* cannot fill"),
  (lambda c: c.train.update(batch_size=4), r"^train.batch_size: 4 is not divisible by the data"),
  (lambda c: c.train.update(grad_accum=2), r"^train.grad_accum: microbatch 4"),
  (lambda c: c.train.update(grad_accum=3), r"^train.grad_accum: 3 does not divide"),
  (lambda c: c.train.update(rows_per_chip=3), r"^train.rows_per_chip: 3 row\(s\) per chip x 8"),
  (lambda c: c.train.update(rows_per_chip=1, grad_accum=2),
   r"^train.rows_per_chip: 1 derives train.grad_accum = 1, which is also set to 2"),
  (lambda c: c.train.update(rows_per_chip=-1), r"^train.rows_per_chip: must be an int >= 0"),
  (lambda c: c.model.global_model.update(n_heads=3),
   r"^model.global_model.n_heads: dim 64 is not "),
  (lambda c: c.model.encoder.update(dim=48), r"^model.decoder.dim: must equal encoder.dim"),
  (lambda c: c.mesh.update(shape=(1, 2, 4)),
   r"^model.encoder.n_heads: 2 heads do not split over the tensor axis \(4\)"),
  (lambda c: c.train.update(task="lm"), r"^train.task: must be one of"),
  (lambda c: c.train.update(steps=0), r"^train.steps: must be a positive int"),
  (lambda c: c.model.patcher.update(mode="entropy"), r"^train.entropy_checkpoint: entropy "),
  (lambda c: c.model.patcher.update(mode="bpe"), r"^model.patcher.mode: must be one of"),
  (lambda c: c.train.update(max_patches=4), r"^train.max_patches: static patching of 32 ids"),
  (lambda c: c.mesh.rules.update(embed="model"), r"^mesh.rules.embed: unknown mesh axis"),
  (lambda c: c.model.diffusion.update(block_prefix_window=0),
   r"^model.diffusion.block_prefix_window: must be a positive int or None"),
  (lambda c: c.train.update(mu_dtype="fp8"), r"^train.mu_dtype: must be 'float32' or"),
])
def test_bad_configs_fail_naming_the_key(edit, key):
  c = tiny_train_config.get_config("blt")
  edit(c)
  with pytest.raises(ConfigError, match=key):
    resolve(c, 8)


@pytest.mark.parametrize("devices,mesh,accum", [(16, (1, -1, 1), 16), (8, (1, -1, 1), 32),
                                                (8, (2, 4, 1), 32), (8, (1, 4, 2), 64)])
def test_rows_per_chip_derives_grad_accum(devices, mesh, accum):
  """BLT-1B's global batch (256) stays fixed; grad_accum follows the slice's data x fsdp."""
  c = load("blt_1b")
  c.train.entropy_checkpoint = "x"
  c.mesh.shape = mesh
  t = resolve(c, devices).train
  assert (t.batch_size, t.rows_per_chip, t.grad_accum) == (256, 1, accum)
  assert t.micro_batch_size == 256 // accum
  c.train.grad_accum = accum  # a resolved config read back resolves the same
  assert resolve(c, devices).train.grad_accum == accum


def test_unknown_train_key_fails():
  c = tiny_train_config.get_config("blt")
  c.train.stepz = 3
  with pytest.raises(ConfigError, match=r"^train.stepz: unknown key"):
    resolve(c, 8)


def test_base_config_has_every_override_key():
  c = base_config()
  for key in ("max_patch_length", "threshold", "mode"):
    assert key in c.model.patcher
  assert "block_size" in c.model.diffusion and "vocab" in c.model.hash
  c.model.patcher.max_patch_length = 8  # placeholder accepts an int
  assert c.train.grad_accum == 1 and tuple(c.mesh.shape) == (1, -1, 1)


# ------------------------------------------------------------------------------------------------
# Loss contract and patches.


def _packed_batch(b: int = 8, s: int = 32, seed: int = 0) -> dict[str, np.ndarray]:
  rows = train._SyntheticRows(seed, s)
  rs = [rows.row(0, i) for i in range(b)]
  return {k: np.stack([r[k] for r in rs]) for k in rs[0]}


def test_train_patch_starts_force_a_start_after_each_eos():
  r = resolve(tiny_train_config.get_config("blt"), 8)
  batch = {k: jnp.asarray(v) for k, v in _packed_batch().items()}
  batch["valid"] = batch["valid"].at[0, 20:].set(False)
  start = np.asarray(losses.train_patch_starts({}, r.model, batch))
  ids = np.asarray(batch["ids"])
  eos_b, eos_t = np.nonzero((ids == EOS_ID) & np.asarray(batch["valid"]))
  assert len(eos_t) > 0
  assert start[eos_b, eos_t + 1].all()
  assert not start[0, 21:].any()  # nothing past the row end (length 20 -> next slot 20)
  assert start[:, 0].all()


def test_truncate_to_patches_cuts_at_a_patch_boundary():
  start = np.zeros((2, 11), bool)
  start[:, [0, 1, 4, 7, 9]] = True
  s, n = losses.truncate_to_patches(jnp.asarray(start), jnp.asarray([10, 6]), 3)
  s, n = np.asarray(s), np.asarray(n)
  assert n.tolist() == [7, 6]  # row 0: patch 3 starts at 7 -> cut there; row 1 fits
  assert np.flatnonzero(s[0]).tolist() == [0, 1, 4, 7]
  assert np.flatnonzero(s[1]).tolist() == [0, 1, 4]


def test_next_byte_metrics_masks_bos_pad_and_counts_bytes():
  ids = np.array([[BOS_ID, 10, 11, EOS_ID, BOS_ID, 12, 0, 0]], np.int32)
  valid = ids > 0
  logits = np.zeros((1, 8, 260), np.float32)  # uniform: every target costs ln 260
  loss, m = losses.next_byte_metrics(jnp.asarray(logits), jnp.asarray(ids), jnp.asarray(valid))
  # Targets: 10, 11, EOS, (BOS skipped), 12; pads skipped.
  assert float(m["weight"]) == 4 and float(m["n_bytes"]) == 3 and float(m["n_eos"]) == 1
  np.testing.assert_allclose(float(loss), np.log(260), rtol=1e-6)
  np.testing.assert_allclose(float(m["nll_bytes_sum"]), 3 * np.log(260), rtol=1e-6)


@pytest.mark.parametrize("task", ["entropy", "blt"])
def test_loss_fn_contract(task):
  r = resolve(tiny_train_config.get_config(task), 8)
  params = model.abstract_params(r.model)
  fn = train.get_loss_fn(r.model, task, r.max_patches)
  batch = {k: jnp.asarray(v) for k, v in _packed_batch().items()}
  if task == "blt":
    batch["start"] = jnp.ones((8, 33), bool)
  loss, metrics = jax.eval_shape(lambda p, b: fn(p, r.model, b, jax.random.key(0)), params,
                                 batch)
  assert loss.shape == () and loss.dtype == jnp.float32
  assert {"weight", "nll_bytes_sum", "n_bytes", "n_tokens"} <= set(metrics)


# ------------------------------------------------------------------------------------------------
# SPMD equivalence and gradient accumulation.


@pytest.fixture(scope="module")
def blt_run():
  """loss/metrics/grads of one BLT batch per (mesh shape, microbatches), computed once each."""
  r = resolve(tiny_train_config.get_config("blt"), 8)
  params = tiny_train_config.random_params(r.model, model.BLT_KEYS)
  batch = _packed_batch()
  # Ragged rows: microbatches hold different target counts, so a mean of means would differ.
  batch["valid"][1, 9:] = False
  batch["valid"][6, 17:] = False
  batch["ids"] = np.where(batch["valid"], batch["ids"], 0)
  batch["doc_ids"] = np.where(batch["valid"], batch["doc_ids"], 0)
  cache = {}

  def run(mesh_shape, n_micro=1, rows=False):
    key = (mesh_shape, n_micro, rows)
    if key not in cache:
      devices = jax.devices()[: int(np.prod(mesh_shape))]
      cache[key] = _loss_and_grads(r, params, batch, mesh_shape, devices, n_micro, rows)
    return cache[key]

  return run


def _loss_and_grads(r, params_host, batch_host, mesh_shape, devices, n_micro=1, rows=False):
  mesh = sharding.make_mesh(mesh_shape, devices)
  shards = model.param_shardings(r.model, mesh, r.rules, model.BLT_KEYS)
  params = jax.device_put(params_host, shards)
  batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim))
           for k, v in batch_host.items()}
  loss_fn = train.get_loss_fn(r.model, "blt", r.max_patches)

  def micro(p, mb, rng):
    mb = dict(mb, start=losses.train_patch_starts(p, r.model, mb))
    return loss_fn(p, r.model, mb, rng)

  # The training step's row-by-row hash-table gradient (optim.RowGradient), else autodiff's.
  hash_rows = train.hash_row_gradient(r.model) if rows else None

  @jax.jit
  def f(p, b):
    return optim.accumulate_gradients(micro, p, b, jax.random.key(0), n_micro, rows=hash_rows)

  with sharding.use_mesh(mesh):
    loss, metrics, grads = f(params, batch)
  wq = params["global_transformer"]["layers_0"]["attention"]["wq"]["kernel"]
  return float(loss), jax.device_get(metrics), jax.device_get(grads), wq.sharding


def test_2x2x2_mesh_matches_one_device(blt_run):
  l1, m1, g1, _ = blt_run((1, 1, 1))
  l8, m8, g8, sh = blt_run((2, 2, 2))
  assert sh.spec == jax.sharding.PartitionSpec("fsdp", "tensor", None)
  np.testing.assert_allclose(l8, l1, rtol=LOSS_RTOL)
  assert m8["weight"] == m1["weight"] > 0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g8), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=str(path))


def test_gradient_accumulation_equals_full_batch(blt_run):
  l1, m1, g1, _ = blt_run((2, 2, 2))
  l2, m2, g2, _ = blt_run((2, 2, 2), n_micro=2)
  np.testing.assert_allclose(l2, l1, rtol=LOSS_RTOL)
  assert m2["weight"] == m1["weight"]
  np.testing.assert_allclose(m2["nll_bytes_sum"], m1["nll_bytes_sum"], rtol=LOSS_RTOL)
  for a, b in zip(jax.tree.leaves(g2), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=GRAD_RTOL, atol=GRAD_ATOL)


@pytest.mark.parametrize("n_micro", [1, 2])
def test_hash_table_rows_gradient_equals_autodiff(blt_run, n_micro):
  """The step's row-by-row hash-table gradient (gather first, scatter into the accumulator)
  equals autodiff's table gradient, on a sharded mesh, with and without accumulation."""
  l1, m1, g1, _ = blt_run((2, 2, 2), n_micro=n_micro)
  l2, m2, g2, _ = blt_run((2, 2, 2), n_micro=n_micro, rows=True)
  np.testing.assert_allclose(l2, l1, rtol=LOSS_RTOL)
  assert m2["weight"] == m1["weight"]
  table = g1
  for k in model.HASH_TABLE_PATH:
    table = table[k]
  assert np.count_nonzero(table) > 0  # the tiny config has hash tables and they are read
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g2), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a, b, rtol=GRAD_RTOL, atol=GRAD_ATOL, err_msg=str(path))


@pytest.mark.parametrize("block_input", ["tok_embeddings", "encoder_states"])
def test_bltd_training_step_runs_with_hash_tables(tmp_path, block_input):
  """BLT-D's compiled training step (tables read by both streams under "encoder_states") keeps
  autodiff's table gradient: the BLT step's row-by-row one serves only the clean ids."""
  c = tiny_train_config.get_config("blt")
  c.model.diffusion.update(block_size=4, block_input=block_input)
  c.train.update(batch_size=8, seq_len=32, export=False, tensorboard=False, progress=False)
  tr = train.Trainer.create(c, tmp_path)
  assert tr.cfg.diffusion.enabled and tr.cfg.hash.num_tables
  state = tr.init_state()
  table0 = np.asarray(state["params"]["local_encoder"]["hash_embeddings"]["embedding"])
  state, metrics = tr.make_train_step()(state, tr.frozen, _packed_batch(8, 32))
  assert np.isfinite(float(metrics["loss"])) and float(metrics["masked_loss"]) > 0
  table1 = np.asarray(state["params"]["local_encoder"]["hash_embeddings"]["embedding"])
  assert np.abs(table1 - table0).max() > 0  # the tables trained


def test_bf16_first_moment_halves_it_and_follows_fp32_adam():
  """`train.mu_dtype="bfloat16"`: Adam's first moment is stored in bf16 (nu and the update stay
  fp32) and three steps move the parameters as fp32 Adam does, to bf16's precision."""
  r32 = resolve(tiny_train_config.get_config("blt"), 8)
  c = tiny_train_config.get_config("blt")
  c.train.mu_dtype = "bfloat16"
  r16 = resolve(c, 8)
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.standard_normal((64, 32)), jnp.float32)}
  out = {}
  for name, rr in (("f32", r32), ("bf16", r16)):
    tx, _ = optim.make_optimizer(rr.train)
    p, st = params, tx.init(params)
    for k in range(3):
      g = {"w": jnp.asarray(np.random.default_rng(k).standard_normal((64, 32)), jnp.float32)}
      u, st = tx.update(g, st, p)
      p = optax_apply(p, u)
    mu = [x for x in jax.tree.leaves(st) if getattr(x, "shape", None) == (64, 32)]
    out[name] = (p["w"], mu)
  assert [m.dtype for m in out["bf16"][1]] == [jnp.bfloat16, jnp.float32]  # mu, nu
  assert [m.dtype for m in out["f32"][1]] == [jnp.float32, jnp.float32]
  step_f32 = np.asarray(out["f32"][0] - params["w"])
  step_bf16 = np.asarray(out["bf16"][0] - params["w"])
  assert np.abs(step_f32).max() > 0
  # bf16 keeps 8 bits: mu's rounding error is relative to the terms it sums (2^-8 of them per
  # step), not to a small sum, so the bound is a fraction of the largest step.
  np.testing.assert_allclose(step_bf16, step_f32, rtol=0, atol=1e-2 * np.abs(step_f32).max())
  assert np.abs(step_bf16 - step_f32).max() > 0  # it did store mu in bf16


def test_offloaded_optimizer_matches_on_device_and_resumes(tmp_path):
  """`train.offload_optimizer`: Adam's moments live in pinned host memory between steps; two
  accumulated steps on a 2x2x2 mesh give the on-device run's state bit for bit (both as the two
  programs offloading needs: `test_split_step_equals_one_program` compares those with one), and
  a checkpoint of the offloaded state restores into host memory with the same values."""
  from bltjax.training import checkpoint

  batch = _packed_batch(8, 32)
  out = {}
  for offload in (False, True):
    c = tiny_train_config.get_config("blt")
    c.mesh.shape = (2, 2, 2)
    c.train.update(batch_size=8, seq_len=32, grad_accum=2, offload_optimizer=offload,
                   export=False, tensorboard=False, progress=False)
    tr = train.Trainer.create(c, tmp_path / str(offload))
    state, step = tr.init_state(), tr.make_train_step(split=True)
    with sharding.use_mesh(tr.mesh):
      for _ in range(2):
        state, _ = step(state, tr.frozen, tr.to_global(batch))
    kinds = {x.sharding.memory_kind for x in jax.tree.leaves(state["opt_state"]) if x.ndim}
    assert kinds == {"pinned_host" if offload else "device"}
    assert {x.sharding.memory_kind for x in jax.tree.leaves(state["params"])} == {"device"}
    out[offload] = (tr, state)
  (_, on_dev), (tr, off) = out[False], out[True]
  # The moments trained (equal zeros would prove nothing).
  assert max(np.abs(np.asarray(x)).max() for x in jax.tree.leaves(off["opt_state"]) if x.ndim) > 0
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(off), jax.tree.leaves(on_dev)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))
  with checkpoint.TrainCheckpointer(tmp_path / "ck", async_save=False) as ck:
    ck.save(2, off, wait=True)
    got = ck.restore(2, tr.abstract_state)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(off)):
    assert a.sharding.memory_kind == b.sharding.memory_kind, path
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def test_split_step_equals_one_program(tmp_path):
  """The step as two programs (gradients, then the update: `train.SplitStep`) computes what the one
  program computes. XLA fuses the gradient's final division differently across a program
  boundary, so the moments agree to summation-order rounding (the gradients' rtol, and an atol
  of 1e-7 of each leaf's largest value), not bit for bit."""
  batch = _packed_batch(8, 32)
  out = {}
  for split in (False, True):
    c = tiny_train_config.get_config("blt")
    c.mesh.shape = (2, 2, 2)
    c.train.update(batch_size=8, seq_len=32, grad_accum=2, export=False, tensorboard=False,
                   progress=False)
    tr = train.Trainer.create(c, tmp_path / str(split))
    state = tr.init_state()
    with sharding.use_mesh(tr.mesh):
      out[split] = jax.device_get(tr.make_train_step(split=split)(state, tr.frozen,
                                                                    tr.to_global(batch)))
  (s1, m1), (s2, m2) = out[False], out[True]
  assert set(m1) == set(m2)
  for k in m1:
    np.testing.assert_allclose(m2[k], m1[k], rtol=LOSS_RTOL, err_msg=k)
  assert int(s2["step"]) == int(s1["step"]) == 1
  moments = [(p, a, b) for (p, a), b in zip(jax.tree_util.tree_leaves_with_path(s2["opt_state"]),
                                            jax.tree.leaves(s1["opt_state"])) if a.ndim]
  assert moments and all(np.abs(b).max() > 0 for _, _, b in moments)
  for path, a, b in moments:
    np.testing.assert_allclose(a, b, rtol=GRAD_RTOL, atol=1e-7 * np.abs(b).max(),
                               err_msg=str(path))


def optax_apply(p, u):
  return jax.tree.map(lambda a, b: a + b, p, u)


def test_lr_schedule_and_decay_mask():
  sched = optim.lr_schedule(1.0, 4, 14, min_ratio=0.1)
  assert float(sched(0)) == pytest.approx(0.25)
  assert float(sched(3)) == pytest.approx(1.0)
  assert float(sched(14)) == pytest.approx(0.1)
  assert 0.1 < float(sched(9)) < 1.0
  mask = optim.decay_mask({"a": {"scale": 1, "kernel": 2}, "tok_embeddings": {"embedding": 3}})
  assert mask == {"a": {"scale": False, "kernel": True}, "tok_embeddings": {"embedding": False}}


def test_window_document_scores_every_target_once():
  ids = np.arange(50, dtype=np.int32)
  seen = np.zeros(50, int)
  for k, (w, score) in enumerate(window_list := list(train.window_document(ids, 16, 8))):
    assert len(w) <= 16
    seen[w[score]] += 1
    if k:
      assert score[: 16 - 8].sum() == 0  # later windows keep >= S - stride ids of context
  assert seen[0] == 0 and (seen[1:] == 1).all()
  assert len(window_list) == 6


# ------------------------------------------------------------------------------------------------
# Two processes (jax.distributed on localhost) give the loss of one.


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int, cache: pathlib.Path) -> dict[str, str]:
  env = dict(os.environ)
  env.update(PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             # Less LLVM optimisation: these runs are short, compiling dominates them.
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                       "--xla_backend_optimization_level=0")
  return env


def _losses(workdir: pathlib.Path) -> dict[int, float]:
  out = {}
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    rec = json.loads(line)
    if "train/loss" in rec:
      out[rec["step"]] = rec["train/loss"]
  return out


def test_two_processes_match_one(tmp_path):
  # The entropy task: the same Trainer / SPMD step as BLT at a third of the compile time (BLT
  # sharding equivalence is checked in-process above).
  cfg = str(ROOT / "tests" / "tiny_train_config.py") + ":entropy"
  common = [sys.executable, str(ROOT / "train.py"), f"--config={cfg}", "--config.train.steps=4",
            "--config.data.source=synthetic", "--config.train.ckpt_every=0",
            "--config.train.export=false", "--config.train.eval_windows=0"]
  cache = tmp_path / "jax_cache"
  port = _free_port()
  procs = [subprocess.Popen(
    common + [f"--workdir={tmp_path / 'two'}", f"--coordinator_address=localhost:{port}",
              "--num_processes=2", f"--process_id={i}"],
    env=_env(4, cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for i in range(2)]
  one = subprocess.run(common + [f"--workdir={tmp_path / 'one'}"], env=_env(8, cache),
                       capture_output=True, text=True, timeout=600)
  outs = [p.communicate(timeout=600)[0] for p in procs]
  assert one.returncode == 0, one.stdout + one.stderr
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out
  assert "processes=2" in outs[0]
  l1, l2 = _losses(tmp_path / "one"), _losses(tmp_path / "two")
  assert sorted(l1) == sorted(l2) == [1, 2, 3, 4]
  for step in l1:
    np.testing.assert_allclose(l2[step], l1[step], rtol=1e-5, err_msg=f"step {step}")
  # Both processes wrote their grain state into the shared checkpoint.
  ckpt = tmp_path / "two" / "checkpoints" / "4" / "dataset"
  assert sorted(p.name for p in ckpt.glob("process_*.json")) == \
    ["process_0-of-2.json", "process_1-of-2.json"]


def test_diffusion_config_uses_bltd_loss_with_the_same_contract():
  c = load("bltd_tiny")
  c.train.entropy_checkpoint = "x"
  r = resolve(c, 8)
  fn = train.get_loss_fn(r.model, "blt", r.max_patches)
  assert fn is not losses.blt_loss
  params = model.abstract_params(r.model)
  batch = {k: jnp.asarray(v) for k, v in _packed_batch(8, 128).items()}
  batch["start"] = jnp.asarray(np.arange(129)[None, :] % 4 == 0).repeat(8, 0)
  batch["start"] = batch["start"].at[:, 1].set(True)
  loss, metrics = jax.eval_shape(lambda p, b: fn(p, r.model, b, jax.random.key(0)), params,
                                 batch)
  assert loss.shape == () and isinstance(metrics, dict)
