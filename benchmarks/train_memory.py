"""Per-device memory of one BLT training step: XLA's memory analysis next to a formula.

Compiles the training code's own step (`training.train.Trainer.make_train_step`: forward, backward,
clip, AdamW, donated state) from abstract arguments only, on CPU with N fake devices and a mesh
(1, N, 1) = fsdp over N, one row per device by default. Nothing is allocated, so the 1B geometry
at 8k bytes compiles on a laptop (slowly: see docs/benchmarks.md "Training memory"). It always
runs on the CPU (JAX_PLATFORMS=cpu and N fake devices from XLA_FLAGS): that is what lets one
host pose as N devices. For the TPU compiler's own figures use benchmarks/tpu_compile.py
(docs/accelerators.md).

Reported per device, in GiB:

  xla_*          `compiled.memory_analysis()`: arguments (params, Adam moments, frozen entropy
                 model, batch), outputs (aliased to the donated arguments), temp (activations,
                 gradients, gathered weights) and generated code; peak = args + outputs - alias +
                 temp. XLA:CPU schedules without the accelerator backends' memory-aware
                 rematerialisation, so treat its temp as a conservative figure.
  residuals_gib  JAX's `saved_residuals` of the step's loss for one row: what the forward pass
                 keeps for the backward pass under the remat policy (backend-independent; the
                 one-layer recompute transient comes on top)
  formula_*      `state_bytes` (exact, from the shardings) + `activation_bytes` (the model below)
  fits           formula and XLA peaks against --hbm_gib (16 by default)

The entropy model is frozen and sharded like the trainable local models (train.entropy_checkpoint
is not read: its abstract parameters stand in), and runs in the step as in a real entropy-patched
run.

  python benchmarks/train_memory.py                     # configs/blt_1b.py, 8192 bytes, 8 devices
  python benchmarks/train_memory.py --config=configs/blt_tiny.py --seq_len=512
  python benchmarks/train_memory.py --remat=full --json=out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30


def _set_devices(n: int) -> None:
  # Must run before jax is imported: the CPU backend reads the flag once, at start-up.
  flag = f"--xla_force_host_platform_device_count={n}"
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join([*flags, flag])
  os.environ.setdefault("JAX_PLATFORMS", "cpu")


def load_config(path: str):
  spec = importlib.util.spec_from_file_location(Path(path).stem, REPO / path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def local_attention_bytes(st, seq_len: int, act_bytes: int, fp_bytes: int) -> tuple[float, float]:
  """(saved, transient) bytes of one self-attention layer for one row, as
  `bltjax.modeling.kernels.local_plan` lays it out (local stacks over bytes, the global model over
  patches).

  Dense [S, S]: 3 fp32 score-sized arrays, the probabilities and the bool mask, all kept
  ((12 + b + 1) bytes per score and head). Segments of Q queries over (n_W + 1)·Q keys, run Mc
  at a time under a rematerialised `lax.map`: only the segment-major copies of K, V (and their
  positions) stay; one chunk's scores ((12 + b + 1)·H·Mc·Q·(n_W + 1)·Q) are transient.
  Blocks of T (no window, `kernels.causal_attend`): the block-major copies of Q, K, V and the
  positions stay; while one query block is differentiated its running state per key block
  (max, sum, fp32 values: H·T·(K + 2)·4 each), one step's [H, T, T] scores and the fp32
  cotangents of all K and V are transient.
  """
  from bltjax.modeling import kernels

  s, b = seq_len, act_bytes
  plan = kernels.local_plan(st, s)
  if plan.block is not None:
    t, n = plan.block, -(-s // plan.block)
    heads_k = (st.n_heads + 2 * st.kv_heads) * st.head_dim
    saved = n * t * (heads_k * fp_bytes + 9)
    transient = (n * st.n_heads * t * (st.head_dim + 2) * 4 + st.n_heads * t * t * (12 + b + 1)
                 + 2 * n * t * st.kv_heads * st.head_dim * 4)
    return float(saved), float(transient)
  if plan.segment is None:
    return float(st.n_heads * s * s * (12 + b + 1)), float(st.n_heads * s * s * 12)
  q = plan.segment
  keys = (-(-(st.window - 1) // q) + 1) * q
  nseg = -(-s // q)
  saved = nseg * keys * (2 * st.kv_heads * st.head_dim * fp_bytes + 9)
  return float(saved), float(st.n_heads * min(plan.chunk, nseg) * q * keys * (12 + b + 1))


def pooling_bytes(cfg, seq_len: int, num_patches: int, act_bytes: int) -> float:
  """Bytes the encoder's pooling cross-attention keeps for one row (outside any remat block).

  Dense [P·C, S] (`kernels.pool_is_segmented` false): masked scores, exp, probabilities (fp32),
  their b-byte copy and two masks, (14 + b) bytes per score and head. Segment softmax: per byte
  C·H scores, exp, probabilities, shift (fp32) and the fp32 product with V (C·D per byte) plus
  the gathered queries.
  """
  from bltjax.modeling import kernels

  e, s, p, b, c = cfg.encoder, seq_len, num_patches, act_bytes, cfg.cross_attn_k
  xh = cfg.cross_attn_nheads or e.n_heads
  per = 6 * e.hidden_dim * b + (5 * b + 40) * e.dim
  rest = s * e.dim * b + p * c * per
  if not kernels.pool_is_segmented(xh, p * c, s):
    return float(xh * p * c * s * (14 + b) + rest)
  return float(s * c * (16 * xh + 4 * e.dim + b * e.dim) + rest)


def activation_bytes(cfg, seq_len: int, num_patches: int, act_bytes: int = 2) -> dict[str, float]:
  """Activation memory of one row of plain BLT training, in bytes, per term.

  Same per-position constants as BLT-D's model (benchmarks/bltd_memory.py): a block keeps about
  6·F·b (SwiGLU) + 5·D·b (q, k, v, o, residual) + 10·D·4 (fp32 RMSNorm and softmax internals)
  per position. Attention as `bltjax.modeling.kernels` plans it (`local_attention_bytes`,
  `pooling_bytes`): at 8k bytes and window 512 the local stacks run segments and pooling a
  per-patch segment softmax, and the global model over P = 4098 patch slots runs blocks.

  Saved until the backward pass ("saved_*"):
    blocks   remat "none": every block's terms. "full": each block's input (S·D·b or P·D·b).
             "dots": that plus every weight-matmul output ((4·D + 3·F)·b per position).
    pooling  outside any remat block (`pooling_bytes`).
    cross    the decoder's per-layer cross-attention, no remat: per byte the C gathered keys
             and values (2·C·D·b), norm_q's fp32 input and output plus its b-byte copy
             ((8 + b)·D), the query, attention output and residual (3·D·b); per latent slot
             (P·C) norm_kv's ((8 + b)·D).
    logits   fp32 logits and their log-softmax.
  Transient, one at a time ("transient_*"):
    layer    the largest block recomputed and differentiated (remat) or its attention gradient
             (no remat): one layer's terms.
    entropy  the frozen entropy model's forward pass, before anything else is live: one layer's
             terms in fp32.
  total = max(entropy, saved + layer).
  """
  e, g, d = cfg.encoder, cfg.global_, cfg.decoder
  s, p, b, c = seq_len, num_patches, act_bytes, cfg.cross_attn_k
  per = lambda st: 6 * st.hidden_dim * b + (5 * b + 40) * st.dim  # noqa: E731
  dots = lambda st: (4 * st.dim + 3 * st.hidden_dim) * b  # noqa: E731
  enc_attn, dec_attn = local_attention_bytes(e, s, b, b), local_attention_bytes(d, s, b, b)
  glob_attn = local_attention_bytes(g, p, b, b)
  enc_layer = s * per(e) + enc_attn[0]
  glob_layer = p * per(g) + glob_attn[0]
  dec_layer = s * per(d) + dec_attn[0]
  if cfg.remat == "none":
    blocks = e.n_layers * enc_layer + g.n_layers * glob_layer + d.n_layers * dec_layer
    layer = max(enc_attn[1], glob_attn[1], dec_attn[1])
  else:
    blocks = (e.n_layers * s * e.dim + g.n_layers * p * g.dim + d.n_layers * s * d.dim) * b
    if cfg.remat == "dots":
      blocks += e.n_layers * s * dots(e) + g.n_layers * p * dots(g) + d.n_layers * s * dots(d)
    layer = max(enc_layer + enc_attn[1], glob_layer + glob_attn[1], dec_layer + dec_attn[1])
  cross = d.n_layers * (s * (2 * c * d.dim * b + (8 + 4 * b) * d.dim) + p * c * (8 + b) * d.dim)
  out = dict(saved_blocks=float(blocks), saved_pooling=pooling_bytes(cfg, s, p, b),
             saved_cross=float(cross), saved_logits=8.0 * s * cfg.vocab_size,
             transient_layer=float(layer), transient_entropy=0.0)
  if cfg.entropy is not None and cfg.patcher.mode == "entropy":
    en = cfg.entropy
    saved_attn, chunk_attn = local_attention_bytes(en, s, 4, 4)
    out["transient_entropy"] = float(s * (6 * en.hidden_dim + 45 * en.dim) + saved_attn
                                     + chunk_attn)
  saved = sum(v for k, v in out.items() if k.startswith("saved"))
  out["saved"] = saved
  out["total"] = max(out["transient_entropy"], saved + out["transient_layer"])
  return out


def state_bytes(tr) -> dict[str, float]:
  """Bytes per device (the largest) of the training state, gradients and frozen entropy model."""
  import jax

  from bltjax.modeling import sharding

  def per_device(tree) -> float:
    d = sharding.shard_bytes_per_device(tree)
    return float(max(d.values())) if d else 0.0

  out = dict(params=per_device(tr.abstract_state["params"]),
             opt_state=per_device(tr.abstract_state["opt_state"]),
             frozen=per_device(tr.frozen))
  out["grads"] = out["params"]  # fp32 gradients, sharded like the params
  out["total"] = sum(out.values())
  out["params_unsharded"] = float(sum(x.size * x.dtype.itemsize
                                      for x in jax.tree.leaves(tr.abstract_state["params"])))
  return out


def residual_bytes(tr) -> float:
  """Bytes JAX saves from forward to backward for one row of the step's loss (no compile)."""
  import jax
  import jax.numpy as jnp

  try:  # public in newer JAX; private in 0.10
    from jax.ad_checkpoint import saved_residuals  # type: ignore[attr-defined]
  except ImportError:  # pragma: no cover
    from jax._src.ad_checkpoint import saved_residuals
  from bltjax.training import losses

  cfg, s = tr.cfg, tr.r.train.seq_len
  sds = jax.ShapeDtypeStruct
  batch = dict(ids=sds((1, s), jnp.int32), valid=sds((1, s), bool),
               doc_ids=sds((1, s), jnp.int32))
  params = jax.tree.map(lambda x: sds(x.shape, x.dtype), tr.abstract_state["params"])
  frozen = jax.tree.map(lambda x: sds(x.shape, x.dtype), tr.frozen)

  def loss(p, f, b):
    full = {**p, **f}
    b = dict(b)
    b["start"] = losses.train_patch_starts(full, cfg, b)
    return tr.loss_fn(full, cfg, b, jax.random.key(0))[0]

  res = saved_residuals(loss, params, frozen, batch)
  return float(sum(math.prod(a.shape) * a.dtype.itemsize for a, why in res
                   if not why.startswith("from the argument")))


def compile_step(c, devices, log=print):
  """Trainer for config `c` on `devices` (a count of this process's devices, or a device list,
  e.g. a TPU topology's); lowers and compiles its step from abstract arguments."""
  import jax
  import jax.numpy as jnp

  from bltjax.modeling import model, sharding
  from bltjax.training import train

  devs = jax.devices()[:devices] if isinstance(devices, int) else list(devices)
  cfg = train.resolve(c, len(devs), 1).model
  ent = model.abstract_params(cfg).get("entropy_model")  # no checkpoint: shapes are all it needs
  tr = train.Trainer.create(c, tempfile.mkdtemp(prefix="train_memory_"), devices=devs,
                            entropy_params=ent)
  b, s = tr.r.train.batch_size, tr.r.train.seq_len
  sds = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt,  # noqa: E731
                                               sharding=tr.batch_sharding(len(shape)))
  batch = dict(ids=sds((b, s), jnp.int32), valid=sds((b, s), bool),
               doc_ids=sds((b, s), jnp.int32))
  if tr.cfg.patcher.mode != "entropy":
    batch["start"] = sds((b, s + 1), bool)
  step = tr.make_train_step()
  with sharding.use_mesh(tr.mesh):
    t = time.perf_counter()
    lowered = step.lower(tr.abstract_state, tr.frozen, batch)
    lower_s = time.perf_counter() - t
    log(f"lowered in {lower_s:.1f}s; compiling ...")
    t = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
  return tr, compiled, lower_s, compile_s


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="configs/blt_1b.py")
  ap.add_argument("--seq_len", type=int, default=8192)
  ap.add_argument("--devices", type=int, default=8, help="fake CPU devices = fsdp size")
  ap.add_argument("--rows_per_device", type=int, default=1)
  ap.add_argument("--remat", default=None, help="none | full | dots (default: the config's)")
  ap.add_argument("--hbm_gib", type=float, default=16.0)
  ap.add_argument("--json", default=None)
  a = ap.parse_args(argv)
  _set_devices(a.devices)
  sys.path.insert(0, str(REPO))
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  c = load_config(a.config)
  c.train.seq_len = a.seq_len
  c.train.batch_size = a.devices * a.rows_per_device
  c.train.grad_accum, c.train.rows_per_chip = 1, 0
  c.mesh.shape = (1, a.devices, 1)
  if c.model.patcher.mode == "entropy":
    c.train.entropy_checkpoint = "(abstract)"  # never read: see compile_step
  if a.remat:
    c.model.remat = a.remat
  tr, compiled, lower_s, compile_s = compile_step(c, a.devices)
  ma = compiled.memory_analysis()
  xla = dict(argument=ma.argument_size_in_bytes, output=ma.output_size_in_bytes,
             alias=ma.alias_size_in_bytes, temp=ma.temp_size_in_bytes,
             generated_code=ma.generated_code_size_in_bytes)
  xla["peak"] = xla["argument"] + xla["output"] - xla["alias"] + xla["temp"]
  cfg, p = tr.cfg, tr.r.max_patches
  act = activation_bytes(cfg, a.seq_len, p, 2 if cfg.dtype == "bfloat16" else 4)
  st = state_bytes(tr)
  resid = residual_bytes(tr)
  formula_peak = st["total"] + a.rows_per_device * act["total"]
  res = dict(config=a.config, seq_len=a.seq_len, max_patches=p, devices=a.devices,
             rows_per_device=a.rows_per_device, remat=cfg.remat, dtype=cfg.dtype,
             lower_s=round(lower_s, 1), compile_s=round(compile_s, 1),
             xla_gib={k: round(v / GIB, 3) for k, v in xla.items()},
             state_gib={k: round(v / GIB, 3) for k, v in st.items()},
             activation_gib_per_row={k: round(v / GIB, 3) for k, v in act.items()},
             residuals_gib_per_row=round(resid / GIB, 3),
             formula_peak_gib=round(formula_peak / GIB, 3), hbm_gib=a.hbm_gib,
             fits_formula=formula_peak <= a.hbm_gib * GIB,
             fits_xla=xla["peak"] <= a.hbm_gib * GIB)
  print(json.dumps(res, indent=2), flush=True)
  if a.json:
    Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
