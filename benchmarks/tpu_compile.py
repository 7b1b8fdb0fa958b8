"""Compile bltjax for a TPU topology on this CPU host: per-chip memory, cost and a roofline.

Every figure here is "compiled for TPU by XLA, predicted, not measured": libtpu's compiler runs
on the CPU (`jax.experimental.topologies.get_topology_desc`), nothing executes, no TPU is opened
(the process runs with JAX_PLATFORMS=cpu). Needs libtpu (`pip install -e ".[tpu]"`, or
`pip install "libtpu==0.0.42.*"` next to jax 0.10.2).

  train    the training code's own step (`bltjax.training.train.Trainer.make_train_step`, as
           benchmarks/train_memory.py compiles it) at the config's global batch, grad_accum and
           remat on a mesh over the topology's chips: the compiler's per-chip peak
           (arguments + outputs - aliases + temp) against the chip's HBM, flops and bytes per
           step (cost_analysis), and a roofline step time max(flops / peak, bytes / bandwidth)
           with the MFU bound it implies.
  decode   one cycle of each decoding method (AR step; BLT-S cycle at k; BLT-D block at Z, one
           step and fixed steps; BLT-DV cycle), jitted as the engine's loops jit them (caches
           donated, logical shardings), at each --batch: flops, bytes accessed, the compiler's
           `optimal_seconds` when positive, and a roofline bytes/s per method from the cycle's
           time and the bytes it yields (assumptions in the JSON), x AR, next to the Eq. 8
           ratio (arXiv 2605.08044 Eq. 8, `bltjax.decoding.nfe`).
  all      both (the default when no sub-command is named): one JSON {"train": ..., "decode": ...}

  python benchmarks/tpu_compile.py --topology v5e:2x4 --config configs/blt_1b.py \\
    --seq-len 8192 --json /tmp/blt1b_v5e8.json                # train and decode, one file

  python benchmarks/tpu_compile.py train --topology v5e:2x2 --config configs/blt_tiny.py \\
    --seq-len 256 --json /tmp/tiny_train.json
  python benchmarks/tpu_compile.py train --topology v5e:4x4 --config configs/blt_1b.py \\
    --json /tmp/blt1b_train.json
  python benchmarks/tpu_compile.py decode --topology v5e:1x1 --config configs/blt_1b.py \\
    --batch 1 64 --json /tmp/blt1b_decode.json

Chip figures (HBM, bandwidth, bf16 peak) are the vendors' public specifications (`CHIPS`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

# Nothing in this process may open an accelerator: the TPU compiler is used ahead of time only.
os.environ["JAX_PLATFORMS"] = "cpu"
# libtpu takes a machine-wide lock file (/tmp/libtpu_lockfile) for the process that owns the TPU;
# ahead-of-time compiles own none, so several may run side by side (tests, other compiles).
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _compiled import cost, memory  # noqa: E402

GIB = 2**30
LABEL = "compiled for TPU by XLA, predicted, not measured"


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int
  hbm_bytes_per_s: float
  bf16_flops_per_s: float


# Public specifications (Google Cloud TPU docs); predictions only.
CHIPS = {
  "v5e": Chip("TPU v5e", 16 * GIB, 819e9, 197e12),
  "v5p": Chip("TPU v5p", 95 * GIB, 2765e9, 459e12),
  "v6e": Chip("TPU v6e", 32 * GIB, 1640e9, 918e12),
}


class Clock:
  """Progress lines with the elapsed time: TPU compiles of big models take many minutes."""

  def __init__(self):
    self.t0 = time.perf_counter()

  def __call__(self, msg: str) -> None:
    print(f"[{time.perf_counter() - self.t0:8.1f}s] {msg}", flush=True)


def chip_for(topology: str) -> Chip:
  gen = topology.split(":", 1)[0].split("-", 1)[0].lower()
  if gen not in CHIPS:
    raise SystemExit(f"error: --topology {topology!r}: unknown chip {gen!r} "
                     f"(known: {sorted(CHIPS)}; e.g. v5e:2x4, v5p:2x2x1, v6e:2x2)")
  return CHIPS[gen]


def topology_devices(topology: str) -> list:
  """The TPU devices of a named topology (e.g. "v5e:2x4"), described by libtpu on this CPU.

  Slices smaller than one host (v5e:1x1, v5e:1x2) are described with the host bounds set to
  the slice itself (libtpu's default host is 2x2x1)."""
  from jax.experimental import topologies

  def describe(**kw):
    return list(topologies.get_topology_desc(topology_name=topology, platform="tpu",
                                             **kw).devices)

  try:
    try:
      return describe()
    except Exception as e:  # a slice smaller than the default host
      if "not divisible" not in str(e):
        raise
      dims = [int(x) for x in topology.split(":", 1)[1].split("x")]
      return describe(chips_per_host_bounds=tuple(dims + [1] * (3 - len(dims))))
  except Exception as e:  # no libtpu, or a name libtpu does not know
    raise SystemExit(f"error: --topology {topology!r}: no TPU topology description "
                     f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                     "is libtpu installed (pip install -e '.[tpu]')?") from None


def load_config(path: str):
  from train_memory import load_config as load

  if not (REPO / path).is_file() and not Path(path).is_file():
    raise SystemExit(f"error: --config {path!r}: no such file")
  return load(path)


def apply_sets(c, sets: list[str]) -> None:
  """`--set KEY=VALUE` config overrides (e.g. model.hash.vocab=500002) for proxy geometries;
  VALUE is a Python literal, else a string. An unknown key stops with an error naming it."""
  import ast

  from bltjax.config import ConfigError
  from bltjax.training import train_config

  for item in sets:
    key, sep, raw = item.partition("=")
    if not sep or not key:
      raise SystemExit(f"error: --set {item!r}: expected KEY=VALUE")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    try:
      train_config.set_key(c, key, value)
    except ConfigError as e:
      raise SystemExit(f"error: --set {item!r}: {e}") from None


def set_attention(c, attention: str | None) -> str:
  """Sets model.attention when BLTConfig has that field; the attention that gets compiled."""
  from bltjax.config import BLTConfig

  has = any(f.name == "attention" for f in dataclasses.fields(BLTConfig))
  if attention is None:
    return str(c.model.get("attention", "xla")) if has else "xla (no model.attention field)"
  if not has:
    raise SystemExit(f"error: --attention {attention!r}: this bltjax's BLTConfig has no "
                     "`attention` field (only the XLA attention exists)")
  c.model.attention = attention
  return attention


def roofline_seconds(c: dict[str, float], chip: Chip) -> float:
  return max(c["flops"] / chip.bf16_flops_per_s, c["bytes_accessed"] / chip.hbm_bytes_per_s)


# ------------------------------------------------------------------------------------------------
# train


def sig(x: float, digits: int = 6) -> float:
  """`x` to `digits` significant digits: tiny configs' TFLOP figures keep their precision."""
  return float(f"{x:.{digits}g}")


def target(a, log: Clock):
  """(chip figures, topology devices, the config with --attention applied, that attention)."""
  chip = chip_for(a.topology)
  devices = topology_devices(a.topology)
  log(f"{a.topology}: {len(devices)} x {devices[0].device_kind}")
  c = load_config(a.config)
  apply_sets(c, a.set)
  return chip, devices, c, set_attention(c, a.attention)


def run_train(a, log: Clock) -> dict:
  from train_memory import compile_step, state_bytes

  chip, devices, c, attention = target(a, log)
  if a.seq_len:
    c.train.seq_len = a.seq_len
  if a.batch_size:
    c.train.batch_size = a.batch_size
  if a.grad_accum:  # chosen by hand: no longer derived from train.rows_per_chip
    c.train.grad_accum, c.train.rows_per_chip = a.grad_accum, 0
  if a.remat:
    c.model.remat = a.remat
  if a.mesh:
    c.mesh.shape = tuple(int(x) for x in a.mesh.split(","))
  if c.train.task == "blt" and c.model.patcher.mode == "entropy":
    c.train.entropy_checkpoint = "(abstract)"  # never read: compile_step passes entropy_params
  log(f"lowering the {c.train.task} step of {a.config} (seq_len {c.train.seq_len}, batch "
      f"{c.train.batch_size}, grad_accum "
      f"{c.train.grad_accum if not c.train.get('rows_per_chip') else 'derived'}, rows_per_chip "
      f"{c.train.get('rows_per_chip', 0) or '-'}, remat {c.model.remat}) ...")
  from bltjax.config import ConfigError

  try:
    tr, compiled, lower_s, compile_s = compile_step(c, devices, log=log)
  except ConfigError as e:
    raise SystemExit(f"error: {a.config}: {e}") from None
  log(f"compiled in {compile_s:.1f}s")
  tc, n = tr.r.train, len(devices)
  dp = math.prod(tr.mesh.shape[ax] for ax in tr.r.rules.mesh_axes("batch"))
  mem, counted = memory(compiled), cost(compiled)
  # XLA's cost analysis prices a loop body once: with grad_accum the counted cost is one
  # microbatch plus the optimiser update. Per step: the microbatch part x grad_accum, the update
  # once (its bytes estimated as 7 reads/writes of the fp32 parameter shard: params, Adam's two
  # moments, the gradients; its flops are negligible).
  opt_bytes = 7.0 * state_bytes(tr)["params"] if tc.grad_accum > 1 else 0.0
  cst = dict(flops=counted["flops"] * tc.grad_accum,
             bytes_accessed=(counted["bytes_accessed"] - opt_bytes) * tc.grad_accum + opt_bytes)
  t = roofline_seconds(cst, chip)
  tokens = tc.batch_size * tc.seq_len
  t_flops = cst["flops"] / chip.bf16_flops_per_s
  res = dict(
    label=LABEL, section="train", topology=a.topology, chip=chip.name, chips=n,
    config=a.config, task=tc.task, bltd=tr.cfg.diffusion.block_size > 0, attention=attention,
    dtype=tr.cfg.dtype, remat=tr.cfg.remat, seq_len=tc.seq_len, global_batch=tc.batch_size,
    grad_accum=tc.grad_accum, rows_per_chip=tc.micro_batch_size / dp,
    mesh_shape=list(tr.r.mesh_shape), max_patches=tr.r.max_patches, lower_s=round(lower_s, 1),
    compile_s=round(compile_s, 1),
    memory_gib_per_chip={k: round(v / GIB, 3) for k, v in mem.items()},
    hbm_gib=round(chip.hbm_bytes / GIB, 1),
    headroom_gib=round((chip.hbm_bytes - mem["peak"]) / GIB, 3),
    fits=mem["peak"] <= chip.hbm_bytes,
    xla_counted_tflops=sig(counted["flops"] / 1e12),
    xla_counted_gb_accessed=sig(counted["bytes_accessed"] / 1e9),
    tflops_per_chip_per_step=sig(cst["flops"] / 1e12),
    gb_accessed_per_chip_per_step=sig(cst["bytes_accessed"] / 1e9),
    optimal_seconds=counted["optimal_seconds"],
    roofline_step_s=round(t, 4),
    roofline_bound="flops" if t_flops >= t - 1e-12 else "bytes",
    roofline_bytes_per_s=round(tokens / t, 1) if t > 0 else None,
    # Compiled flops include remat recomputation: an upper bound on true MFU at that step time.
    mfu_upper_bound=round(t_flops / t, 4) if t > 0 else None)
  if hasattr(compiled, "gradients"):  # train.SplitStep (offloaded optimizer): each program
    res["programs_gib_per_chip"] = {
      name: {k: round(v / GIB, 3) for k, v in memory(getattr(compiled, name)).items()}
      for name in ("gradients", "update")}
  return res


# ------------------------------------------------------------------------------------------------
# decode

# arXiv 2605.08044, 3B Fr->En: generated bytes per BLT-S verification (benchmarks/fast_decode.py).
PAPER_BYTES_PER_VERIFICATION = {4: 2.38, 8: 3.94, 16: 5.89}
DEFAULT_METHODS = ("ar", "blts:4", "blts:8", "blts:16", "bltd:4", "bltd:8", "bltd:16",
                   "bltdv:4", "bltdv:8", "bltdv:16")


@dataclasses.dataclass(frozen=True)
class DecodeMethod:
  """One cycle to compile and what a cycle yields (the prediction's assumptions)."""

  spec: str
  name: str  # generation.METHODS key
  window: int  # BLT-S k or BLT-D / BLT-DV Z (0 for AR)


def parse_decode_method(spec: str) -> DecodeMethod:
  name, _, w = spec.partition(":")
  if name not in ("ar", "blts", "bltd", "bltdv") or (name == "ar") != (w == ""):
    raise SystemExit(f"error: --methods: {spec!r} is not ar | blts:K | bltd:Z | bltdv:Z")
  try:
    window = int(w) if w else 0
  except ValueError:
    raise SystemExit(f"error: --methods: {spec!r}: {w!r} is not an int") from None
  return DecodeMethod(spec, name, window)


def abstract_params(cfg):
  import jax

  from bltjax.modeling import model

  return jax.eval_shape(lambda k: model.init_params(cfg, k), jax.random.key(0))


def decode_cycle_program(cfg, m: DecodeMethod, mesh, batch: int, prompt_len: int, max_new: int):
  """The jitted cycle of method `m` (as `runloop.loop` runs it: params, GenState with the engine
  state donated, LoopArgs) and its abstract, sharded arguments on `mesh`."""
  import jax
  import jax.numpy as jnp

  from bltjax.decoding import engine, generation, runloop
  from bltjax.modeling import layers, model, sharding

  opt = generation.Options(draft_k=m.window or 8, rule="one_step" if m.name != "ar" else None)
  generation.check(m.name, cfg, opt)
  method = generation.METHODS[m.name]
  max_q, static = method.static(cfg, opt)
  cycle = method.cycle
  dt = jnp.dtype(cfg.dtype)
  cast = lambda x: jax.ShapeDtypeStruct(  # noqa: E731 - decoding weights in the compute dtype
    x.shape, dt if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype)
  plain = jax.tree.map(cast, abstract_params(cfg))
  if mesh.size == 1:  # as decode.py: fused q|k|v and w1|w3 kernels, which cannot shard
    plain = jax.eval_shape(layers.fuse_projections, plain)
    p_sh = jax.tree.map(lambda _: sharding.replicated(mesh), plain)
  else:
    p_sh = model.param_shardings(cfg, mesh)
  cap = min(512, cfg.patcher.max_patch_length or 512)
  spec = engine.CacheSpec(max_patches=generation.bucket(prompt_len + max_new + 2),
                          max_len=prompt_len + max_new + 1, patch_cap=cap, max_q=max_q)
  i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)  # noqa: E731
  st = jax.eval_shape(lambda p, i, n: engine.prefill(p, cfg, i, n, spec, method.open_latent),
                      plain, i32(batch, prompt_len), i32(batch))
  g = jax.eval_shape(lambda s, b: runloop.init(s, b, max_new, max_q), st, i32(batch))
  f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
  keys = jax.eval_shape(lambda: jax.vmap(jax.random.key)(jnp.zeros((batch,), jnp.int32)))
  ctx = runloop.LoopArgs(
    budget=i32(batch), keys=keys, temperature=f32(batch), top_k=i32(batch), top_p=f32(batch),
    stop_ids=i32(runloop.MAX_STOPS, runloop.MAX_STOP_LEN), stop_len=i32(runloop.MAX_STOPS),
    eos=i32(), alpha=f32(), gamma=f32(), tau=f32())
  repl = sharding.replicated(mesh)
  g_sh = dataclasses.replace(jax.tree.map(lambda _: repl, g),
                             state=engine.state_shardings(st, mesh))
  ctx_sh = jax.tree.map(lambda _: repl, ctx)
  place = lambda t, sh: jax.tree.map(  # noqa: E731
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), t, sh)
  dcfg = engine.decoding_config(cfg)

  def one_cycle(params, g, ctx):
    return cycle(params, dcfg, g, ctx, static)

  fn = jax.jit(one_cycle, in_shardings=(p_sh, g_sh, ctx_sh), out_shardings=g_sh,
               donate_argnums=(1,))
  return fn, (place(plain, p_sh), place(g, g_sh), place(ctx, ctx_sh))


def cycle_passes(m: DecodeMethod, steps: int, batch: int, patch: float,
                 enc_states: bool) -> dict[str, float]:
  """Weight passes one cycle runs per module (a batch reads the weights once per pass): AR's
  global model when any row closes a patch, 1 - (1 - 1/patch)^B of the steps; BLT-S's k drafts
  run the encoder's byte layer and the decoder; a BLT-D block `steps` denoising passes of the
  decoder (and encoder with encoder_states), then the commit forward; BLT-DV the clean x0
  (encoder + decoder), the drafts, and the verification forward."""
  one = dict(decoder=1.0, encoder=1.0, entropy=1.0, glob=1.0)  # a forward over new positions
  if m.name == "ar":
    return dict(one, glob=1.0 - (1.0 - 1.0 / patch) ** batch)
  if m.name == "blts":
    return dict(one, decoder=1.0 + m.window, encoder=1.0 + m.window)
  extra = float(steps) if enc_states else 0.0
  if m.name == "bltd":
    return dict(one, decoder=1.0 + steps, encoder=1.0 + extra)
  return dict(one, decoder=2.0 + steps, encoder=2.0 + extra)


def decode_prediction(m: DecodeMethod, cst: dict, counts, batch: int, chip: Chip, wb: int,
                      patch: float, enc_states: bool, steps: int = 1, shards: int = 1) -> dict:
  """Two roofline predictions of one cycle, and bytes/s from the bytes a cycle yields.

  xla_*:     XLA's counted cost, corrected for what its cost analysis cannot see (it prices a
             while loop's body once and a lax.cond at its costlier branch): BLT-S drafts and
             BLT-D denoising steps beyond the first are added, AR's global pass is charged at
             the steps where some row closes a patch, all priced by their weights (bytes:
             params x `wb`; flops: 2 x params x rows).
  weights_*: bytes = the weights of the passes the cycle runs (`cycle_passes`; hash tables,
             caches and activations not counted), flops = the corrected XLA flops: the weight-
             streaming bound decoding is usually held to.
  XLA's figures are per chip; weights split over `shards` chips (fsdp x tensor) are read 1 /
  shards per chip, and so are the weight-priced corrections.
  """
  n = cycle_passes(m, steps, batch, patch, enc_states)
  counts = dataclasses.replace(counts, **{  # per chip
    f.name: getattr(counts, f.name) / shards for f in dataclasses.fields(counts)})
  per = dict(decoder=counts.dec, encoder=counts.enc, entropy=counts.entropy, glob=counts.glob)
  flops, nbytes = cst["flops"], cst["bytes_accessed"]
  w = m.window
  if m.name == "ar":  # XLA priced the global pass at every step
    flops -= (1 - n["glob"]) * 2 * batch * counts.glob
    nbytes -= (1 - n["glob"]) * wb * counts.glob
    cycle_bytes = 1.0
    note = f"1 byte per step; mean patch {patch:g} bytes"
  elif m.name == "blts":  # XLA priced one of the k drafts (encoder byte layer + decoder)
    flops += (w - 1) * 2 * batch * (counts.enc + counts.dec)
    nbytes += (w - 1) * wb * (counts.enc + counts.dec)
    cycle_bytes = PAPER_BYTES_PER_VERIFICATION.get(w, w / 2)
    note = f"k = {w} drafts, {cycle_bytes} bytes per verification (paper, 3B Fr->En)"
  else:  # XLA priced one denoising step
    dn = counts.dec + (counts.enc if enc_states else 0)
    flops += (steps - 1) * 2 * batch * w * dn
    nbytes += (steps - 1) * wb * dn
    if m.name == "bltd":
      cycle_bytes = float(w)
      note = f"{steps} denoising step(s) per block of Z = {w} bytes"
    else:
      cycle_bytes = PAPER_BYTES_PER_VERIFICATION.get(w, w / 2)
      note = (f"{steps} denoising step(s) for Z = {w} drafts, {cycle_bytes} bytes per "
              "verification (assumed as BLT-S at k = Z, paper 3B Fr->En)")
  wbytes = wb * sum(n[k] * per[k] for k in n)
  t_xla = roofline_seconds(dict(flops=flops, bytes_accessed=nbytes), chip)
  t_w = roofline_seconds(dict(flops=flops, bytes_accessed=wbytes), chip)
  # Eq. 8 (arXiv 2605.08044): decoder NFEs x P_dec + encoder/global NFEs x (P_enc + P_glob).
  n_dec = {"ar": 1.0, "blts": w + 1.0, "bltd": float(steps), "bltdv": steps + 1.0}[m.name]
  n_enc = 1.0 / patch if m.name == "ar" else 1.0
  eq8 = wb * (n_dec * counts.dec + n_enc * (counts.enc + counts.glob)) / 1e9
  return dict(assumption=note, bytes_per_cycle=cycle_bytes,
              xla_tflops_corrected=round(flops / 1e12, 6),
              xla_gb_corrected=round(nbytes / 1e9, 4), xla_cycle_s=t_xla,
              xla_bytes_per_s=batch * cycle_bytes / t_xla if t_xla > 0 else None,
              weights_gb=round(wbytes / 1e9, 4), weights_cycle_s=t_w,
              weights_bytes_per_s=batch * cycle_bytes / t_w if t_w > 0 else None,
              eq8_gb_per_byte=eq8 / cycle_bytes)


def x_ar(p: dict, ref: dict, key: str) -> float | None:
  return round(p[key] / ref[key], 3) if ref.get(key) and p.get(key) else None


def run_decode(a, log: Clock) -> dict:
  import jax.numpy as jnp

  from bltjax.config import BLTConfig
  from bltjax.decoding import nfe
  from bltjax.modeling import sharding

  chip, devices, c, attention = target(a, log)
  base = BLTConfig.from_dict(c.model.to_dict())
  shape = tuple(int(x) for x in a.mesh.split(",")) if a.mesh else (1, 1, len(devices))
  mesh = sharding.make_mesh(shape, devices, key="--mesh")
  methods = [parse_decode_method(x) for x in (a.methods.split(",") if a.methods
                                               else DEFAULT_METHODS)]
  if methods[0].name != "ar":
    methods.insert(0, parse_decode_method("ar"))
  wb = jnp.dtype(base.dtype).itemsize
  shards = mesh.shape["fsdp"] * mesh.shape["tensor"]  # ways the weights are split
  rows, ar = [], {}
  head = dict(label=LABEL, section="decode", topology=a.topology, chip=chip.name,
              chips=len(devices), config=a.config, attention=attention, dtype=base.dtype,
              mesh_shape=list(mesh.devices.shape), prompt_len=a.prompt_len, max_new=a.max_new,
              patch_mean=a.patch, notes=(
                "XLA's cost analysis prices a while loop's body once and a lax.cond at its "
                "costlier branch; corrected_* add the loop iterations beyond the first (BLT-S "
                "drafts, BLT-D steps) and remove AR's global pass at all but 1 / patch of the "
                "steps, priced by their weights; attention over the caches is in the counted "
                "cost once per cycle (its chunk loop once)"),
              rows=rows)
  for m in methods:  # every batch of a method before the next method: the JSON grows by pairs
    cfg = base
    if m.name in ("bltd", "bltdv"):  # BLT-D geometry: the config's model + diffusion blocks
      cfg = base.replace(diffusion=dataclasses.replace(base.diffusion, block_size=m.window))
    counts = nfe.param_counts(abstract_params(cfg))
    enc_states = cfg.diffusion.block_input == "encoder_states"
    for batch in a.batch:
      log(f"batch {batch} {m.spec}: lowering and compiling one cycle ...")
      fn, args = decode_cycle_program(cfg, m, mesh, batch, a.prompt_len, a.max_new)
      t0 = time.perf_counter()
      try:
        with sharding.use_mesh(mesh):
          compiled = fn.lower(*args).compile()
      except Exception as e:  # the TPU compiler refuses a program (e.g. out of HBM): a result
        msg = str(e).splitlines()[0][:400]
        log(f"batch {batch} {m.spec}: not compiled: {msg}")
        rows.append(dict(method=m.spec, batch=batch, fits=False, error=msg))
        if m.name == "ar":
          break  # nothing to compare the other methods with at this batch
        continue
      cs = time.perf_counter() - t0
      if a.dump_hlo:
        Path(a.dump_hlo).mkdir(parents=True, exist_ok=True)
        (Path(a.dump_hlo) / f"{m.spec.replace(':', '_')}_b{batch}.txt").write_text(
          compiled.as_text())
      mem, cst = memory(compiled), cost(compiled)
      name = m.spec + (":one_step" if m.name in ("bltd", "bltdv") else "")
      preds = [(name, decode_prediction(m, cst, counts, batch, chip, wb, a.patch, enc_states,
                                        shards=shards))]
      if m.name == "bltd":  # fixed numbers of denoising steps per block
        for s in sorted({max(2, m.window // 4), max(2, m.window // 2)}):
          preds.append((f"{m.spec}:steps{s}", decode_prediction(
            m, cst, counts, batch, chip, wb, a.patch, enc_states, steps=s, shards=shards)))
      for label, p in preds:
        if m.name == "ar":
          ar[batch] = p
        ref = ar[batch]
        row = dict(method=label, batch=batch, compile_s=round(cs, 1),
                   xla_tflops=round(cst["flops"] / 1e12, 6),
                   xla_gb_accessed=round(cst["bytes_accessed"] / 1e9, 4),
                   optimal_seconds=cst["optimal_seconds"],
                   memory_gib_per_chip={k: round(v / GIB, 3) for k, v in mem.items()},
                   fits=mem["peak"] <= chip.hbm_bytes, **p,
                   xla_x_ar=x_ar(p, ref, "xla_bytes_per_s"),
                   weights_x_ar=x_ar(p, ref, "weights_bytes_per_s"),
                   eq8_x_ar=round(ref["eq8_gb_per_byte"] / p["eq8_gb_per_byte"], 3))
        rows.append(row)
        log(f"batch {batch} {label:18s} compile {cs:6.1f}s  peak {mem['peak'] / GIB:7.3f} GiB  "
            f"B/s predicted: xla {row['xla_bytes_per_s']:10.1f} ({row['xla_x_ar']} x AR)  "
            f"weights {row['weights_bytes_per_s']:10.1f} ({row['weights_x_ar']} x AR)  "
            f"Eq.8 {row['eq8_x_ar']} x AR")
      if a.json:  # after every program: a long run that is stopped keeps what it compiled
        Path(a.json).write_text(json.dumps(head, indent=2) + "\n")
  return head


# ------------------------------------------------------------------------------------------------


def table(paths: list[str]) -> str:
  """Markdown tables of `train`, `decode` and `all` JSON files (docs/accelerators.md)."""
  out_t, out_d = [], []
  results = []
  for path in paths:
    r = json.loads(Path(path).read_text())
    results += [r["train"], r["decode"]] if r["section"] == "all" else [r]
  for r in results:
    if r["section"] == "train":
      m = r["memory_gib_per_chip"]
      out_t.append(
        f"| {r['config']} | {r['topology']} | {r['seq_len']} | {r['global_batch']} | "
        f"{r['grad_accum']} | {r['rows_per_chip']:g} | {r['remat']} | {m['argument']:.2f} | "
        f"{m['temp']:.2f} | **{m['peak']:.2f}** / {r['hbm_gib']:g} | {r['headroom_gib']:.2f} | "
        f"{r['tflops_per_chip_per_step']:.1f} | {r['roofline_step_s']:.2f} | "
        f"{r['mfu_upper_bound']:.2f} | {r['compile_s'] / 60:.0f} min |")
      continue
    for x in r["rows"]:
      if "error" in x:
        out_d.append(f"| {r['config']} | {r['topology']} | {x['batch']} | {x['method']} | "
                     f"does not compile: {x['error'][:120]} |||||||")
        continue
      out_d.append(
        f"| {r['config']} | {r['topology']} | {x['batch']} | {x['method']} | "
        f"{x['memory_gib_per_chip']['peak']:.2f} | {x['xla_tflops']:.4f} | "
        f"{x['xla_gb_accessed']:.2f} | {x['weights_gb']:.2f} | {x['bytes_per_cycle']:g} | "
        f"{x['xla_bytes_per_s']:,.0f} ({x['xla_x_ar']}x) | "
        f"{x['weights_bytes_per_s']:,.0f} ({x['weights_x_ar']}x) | {x['eq8_x_ar']}x |")
  parts = []
  if out_t:
    parts.append("| config | topology | bytes/row | global batch | grad_accum | rows/chip | remat "
                 "| args GiB | temp GiB | peak / HBM GiB | headroom GiB | TFLOP/chip/step | "
                 "roofline step s | MFU bound | compile |\n" + "|---" * 15 + "|\n"
                 + "\n".join(out_t))
  if out_d:
    parts.append("| config | topology | batch | method | peak GiB | XLA TFLOP | XLA GB | "
                 "weights GB | bytes/cycle | B/s (XLA cost) | B/s (weights) | Eq. 8 |\n"
                 + "|---" * 12 + "|\n" + "\n".join(out_d))
  return "\n\n".join(parts)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = ap.add_subparsers(dest="cmd", required=True)
  tb = sub.add_parser("table", help="markdown tables of train / decode JSON files")
  tb.add_argument("files", nargs="+")
  argv = sys.argv[1:] if argv is None else argv
  if not argv:  # `make bench` runs every script bare: the compiles are long and need choices
    print("skipped: tpu_compile.py needs a sub-command (train | decode | table); see "
          "docs/accelerators.md")
    return 0
  if argv[0].startswith("--") and argv[0] not in ("-h", "--help"):
    argv = ["all", *argv]  # no sub-command: train and decode
  for name in ("train", "decode", "all"):
    p = sub.add_parser(name)
    p.add_argument("--topology", required=True, help="e.g. v5e:2x4, v5e:4x4, v5p:2x2x1")
    p.add_argument("--config", required=True)
    p.add_argument("--attention", default=None,
                   help="model.attention to compile (auto|xla|pallas|cudnn) when the config has it")
    p.add_argument("--json", default=None)
    p.add_argument("--mesh", default=None, help="data,fsdp,tensor (default: the config's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable (e.g. model.hash.vocab=500002)")
  for tp in (sub.choices["train"], sub.choices["all"]):
    tp.add_argument("--seq-len", type=int, default=0, help="default: the config's train.seq_len")
    tp.add_argument("--batch-size", type=int, default=0, help="global rows (default: config)")
    tp.add_argument("--grad-accum", type=int, default=0,
                    help="default: the config's (or derived from train.rows_per_chip)")
    tp.add_argument("--remat", default=None, help="none | full | dots (default: the config's)")
  for dp in (sub.choices["decode"], sub.choices["all"]):
    dp.add_argument("--batch", type=int, nargs="+", default=[1, 64])
    dp.add_argument("--methods", default="",
                    help=f"comma-separated ar | blts:K | bltd:Z | bltdv:Z (default: "
                         f"{','.join(DEFAULT_METHODS)})")
    dp.add_argument("--prompt-len", type=int, default=128, help="prompt ids (a power of two)")
    dp.add_argument("--max-new", type=int, default=256)
    dp.add_argument("--dump-hlo", default=None, help="write each compiled program's HLO here")
    dp.add_argument("--patch", type=float, default=4.0,
                    help="mean patch length assumed for AR's global passes (fast_decode.py's 4)")
  a = ap.parse_args(argv)
  if a.cmd == "table":
    print(table(a.files))
    return 0
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  log = Clock()
  if a.cmd == "all":  # train, then decode (its partial JSON is not written: one file at the end)
    part = argparse.Namespace(**{**vars(a), "json": None})
    res = {"section": "all", "train": run_train(part, log), "decode": run_decode(part, log)}
  else:
    res = run_train(a, log) if a.cmd == "train" else run_decode(a, log)
  print(json.dumps(res, indent=2), flush=True)
  if a.json:
    Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    log(f"wrote {a.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
