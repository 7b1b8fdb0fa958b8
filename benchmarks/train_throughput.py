"""Training throughput (bytes/s) of bltjax vs HF transformers' `BltForCausalLM`, same run.

Geometry: configs/bench_20m.py (encoder 1x256, global 4x512, decoder 4x256, k = 2, 6 hash tables
of 50002 rows); batch 8 x 512 bytes of real text (the committed fixture); fp32; static patches of
4 for both (given explicitly, so neither runs a patcher). Both start from the same weights: the
bltjax init exported with `bltjax.convert.hf.save_hf` and loaded by `from_pretrained`; the
first-step losses are printed side by side as a check that the two compute the same model.

Each side runs one full optimiser step per iteration (forward, backward, global-norm clip 1.0,
AdamW 0.9/0.95/1e-8, wd 0.1): bltjax its jitted, donated `Trainer` step; HF a plain PyTorch loop
(`torch.optim.AdamW(fused=False)`, default CPU threads). bytes/s = B * S / median step time,
after warm-up (bltjax's compile is excluded and reported separately).

MFU = model FLOPs per step / median step time / peak, where the peak is a dense fp32 matmul
(2048^3, jitted, timed after warm-up) measured in the same run, so both sides are compared with
what this machine's matmul units sustain. Model FLOPs (`model_flops`) count the useful work of
the model, the same for both implementations: 6 x the weight-matmul parameters each stack
applies at its own sequence length (bytes for the local models, patches for the global one),
plus the attention scores and mixes (QK^T and AV over the visible keys only, x 3 for the
backward pass); lookups (byte and hash embeddings) cost nothing. bltjax's XLA FLOP count
(`compiled.cost_analysis()`) is printed next to it: it includes the masked-out attention work
of dense masks, the optimiser and the elementwise ops.

  python benchmarks/train_throughput.py [--steps 6] [--warmup 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PATCHES = 512 // 4 + 1  # static 4 over 512 ids, plus the next-slot patch
sys.path.insert(0, str(REPO))

from benchmarks._timing import time_steps  # noqa: E402


def _config():
  spec = importlib.util.spec_from_file_location("bench_20m", REPO / "configs" / "bench_20m.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.data.source = "fixture"
  c.train.update(progress=False, tensorboard=False, eval_windows=0, warmup_steps=10)
  c.mesh.shape = (1, 1, 1)
  c.train.max_patches = PATCHES  # exactly the static patches: both models see the same P
  return c


def _batch(c) -> dict[str, np.ndarray]:
  """One batch of packed real text and its static-4 patch starts (no forced EOS starts)."""
  from bltjax.data import pipeline
  from bltjax.modeling import patching

  it = pipeline.make_train_iterator(c.data, seq_len=c.train.seq_len, batch_size=c.train.batch_size,
                                    seed=0, process_index=0, process_count=1)
  b = next(it)
  lengths = b["valid"].sum(-1)
  start = patching.static_patch_starts(lengths, c.train.seq_len, 4)
  return dict(b, start=np.asarray(start))


def model_flops(cfg, seq_len: int, num_patches: int, rows: int) -> dict[str, float]:
  """Model FLOPs of one training step over `rows` rows (2 per multiply-add, backward = 2x).

  Per row and forward pass: each stack's block matmuls (attention projections + SwiGLU) at its
  own length, the encoder's pooling cross-attention (k, v over the bytes; q, o and the patch
  projection over the P·C queries), the decoder's per-layer cross-attention (q, o over the
  bytes; k, v over the P·C latent slots), the decoder's patch projection and output head; and
  attention FLOPs 4·H·K per visible (query, key) pair (causal within the window).
  """
  e, g, d = cfg.encoder, cfg.global_, cfg.decoder
  s, p, c, v = seq_len, num_patches, cfg.cross_attn_k, cfg.vocab_size

  def block(st):
    return st.dim * st.head_dim * (2 * st.n_heads + 2 * st.kv_heads) + 3 * st.dim * st.hidden_dim

  def pairs(n, w):  # causal (query, key) pairs when each query sees at most w keys, itself included
    w = n if w is None else min(w, n)
    return w * (w + 1) // 2 + (n - w) * w

  def attn(st, n):
    return 4 * st.n_heads * st.head_dim * pairs(n, st.window)

  de, dg, dd = e.dim, g.dim, d.dim
  proj = c * de * dg if cfg.needs_global_projection else 0
  mm = dict(encoder=2 * (e.n_layers * block(e) * s + p * de * c * de + 2 * p * c * de * de
                         + 2 * s * de * de),
            global_=2 * (g.n_layers * block(g) * p + p * proj),
            decoder=2 * (d.n_layers * (block(d) * s + 2 * s * dd * dd + 2 * p * c * dd * dd)
                         + p * dg * c * dd + s * dd * v))
  at = dict(encoder=e.n_layers * attn(e, s) + 4 * de * s * c,
            global_=g.n_layers * attn(g, p),
            decoder=d.n_layers * (attn(d, s) + 4 * dd * s * c))
  out = {f"matmul_{k}": 3.0 * rows * x for k, x in mm.items()}
  out.update({f"attention_{k}": 3.0 * rows * x for k, x in at.items()})
  out["total"] = sum(out.values())
  return out


def matmul_peak(n: int = 2048, reps: int = 10) -> dict[str, float]:
  """FLOP/s of a dense fp32 n^3 matmul: JAX (jitted) and torch, median of `reps` after warm-up."""
  import jax
  import jax.numpy as jnp
  import torch

  out = {}
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  ta = torch.randn(n, n, dtype=torch.float32)
  for name, run in (("jax", lambda: f(a, a).block_until_ready()), ("torch", lambda: ta @ ta)):
    for _ in range(3):
      run()
    times = []
    for _ in range(reps):
      t = time.perf_counter()
      run()
      times.append(time.perf_counter() - t)
    out[name] = 2.0 * n**3 / statistics.median(times)
  return out


def _xla_flops(compiled) -> float | None:
  ca = compiled.cost_analysis()
  if isinstance(ca, (list, tuple)):  # older JAX: one dict per computation
    ca = ca[0] if ca else None
  return float(ca["flops"]) if ca and "flops" in ca else None


def bench_bltjax(c, batch, steps: int, warmup: int):
  import jax

  from bltjax.modeling import model, sharding
  from bltjax.training import train

  tr = train.Trainer.create(c, tempfile.mkdtemp(prefix="bench_bltjax_"), devices=jax.devices()[:1])
  # Host copy: the step donates its state, and HF gets these same weights afterwards.
  full = jax.device_get(jax.jit(lambda k: model.init_params(tr.cfg, k))(jax.random.key(0)))
  params = {k: full[k] for k in model.BLT_KEYS}
  params = jax.device_put(params, tr.state_shardings["params"])
  opt = jax.jit(tr.tx.init, out_shardings=tr.state_shardings["opt_state"])(params)
  state = {"params": params, "opt_state": opt, "step": jax.numpy.int32(0)}
  gbatch = tr.to_global(batch)
  # Compiled ahead of time (lowering reads shapes only; nothing is donated yet), so XLA's FLOP
  # count comes with the executable that is timed.
  t = time.perf_counter()
  with sharding.use_mesh(tr.mesh):
    compiled = tr.make_train_step().lower(state, tr.frozen, gbatch).compile()
  compile_s = time.perf_counter() - t
  _, first, m, _, times = time_steps(compiled, state, tr.frozen, gbatch, steps, warmup)
  return {"first_loss": float(first["loss"]), "compile_s": compile_s, "step_s": times,
          "last_loss": float(m["loss"]), "xla_flops": _xla_flops(compiled)}, full, tr


def bench_hf(c, batch, full_params, cfg, steps: int, warmup: int):
  import torch
  from transformers import BltForCausalLM

  from bltjax.config import BOS_ID
  from bltjax.convert import hf
  from bltjax.modeling import patching

  tmp = Path(tempfile.mkdtemp(prefix="bench_hf_")) / "hf"
  hf.save_hf(tmp, full_params, cfg)
  model = BltForCausalLM.from_pretrained(tmp, torch_dtype=torch.float32)
  model.train()
  ids = torch.as_tensor(batch["ids"], dtype=torch.long)
  lengths = batch["valid"].sum(-1)
  pl = np.asarray(patching.to_hf_lengths(batch["start"], max_patches=PATCHES, lengths_B=lengths))
  patch_lengths = torch.as_tensor(pl, dtype=torch.long)
  # The same targets as bltjax: next byte, never BOS, never padding (HF shifts labels itself).
  labels = ids.clone()
  labels[(ids == BOS_ID) | torch.as_tensor(~batch["valid"])] = -100
  opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8,
                          weight_decay=0.1, foreach=True)
  times, first_loss, loss = [], None, None
  for i in range(warmup + steps + 1):
    t = time.perf_counter()
    out = model(input_ids=ids, patch_lengths=patch_lengths, labels=labels, use_cache=False)
    loss = out.loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if first_loss is None:
      first_loss = float(loss)
    if i > warmup:
      times.append(time.perf_counter() - t)
  return {"first_loss": first_loss, "step_s": times, "last_loss": float(loss),
          "threads": torch.get_num_threads()}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--steps", type=int, default=6)
  ap.add_argument("--warmup", type=int, default=2)
  ap.add_argument("--json", default=None, help="also write the figures here")
  args = ap.parse_args(argv)
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  c = _config()
  batch = _batch(c)
  n_bytes = int(batch["valid"].sum())
  jx, full, tr = bench_bltjax(c, batch, args.steps, args.warmup)
  print(f"bltjax: median step {statistics.median(jx['step_s']):.3f}s "
        f"(compile {jx['compile_s']:.1f}s); now HF ...", flush=True)
  ht = bench_hf(c, batch, full, tr.cfg, args.steps, args.warmup)
  peak = matmul_peak()
  rows, seq = batch["ids"].shape
  flops = model_flops(tr.cfg, seq, PATCHES, rows)
  res = {"bytes_per_step": n_bytes, "batch": list(batch["ids"].shape),
         "model_flops_per_step": flops, "peak_flops": peak}
  for name, r in (("bltjax", jx), ("hf", ht)):
    med = statistics.median(r["step_s"])
    res[name] = dict(r, median_step_s=med, bytes_per_s=n_bytes / med,
                     model_flops_per_s=flops["total"] / med,
                     mfu=flops["total"] / med / peak["jax"])
  res["ratio"] = res["bltjax"]["bytes_per_s"] / res["hf"]["bytes_per_s"]
  print(f"bench_20m, batch {res['batch'][0]} x {res['batch'][1]} bytes, fp32, static patches "
        "of 4, one AdamW step per iteration")
  print(f"  first-step loss   bltjax {jx['first_loss']:.5f}   HF {ht['first_loss']:.5f}")
  print(f"  bltjax  {res['bltjax']['bytes_per_s']:10.0f} bytes/s  "
        f"(median step {res['bltjax']['median_step_s']:.3f}s, compile {jx['compile_s']:.1f}s)")
  print(f"  HF      {res['hf']['bytes_per_s']:10.0f} bytes/s  "
        f"(median step {res['hf']['median_step_s']:.3f}s, {ht['threads']} torch threads)")
  print(f"  ratio bltjax / HF = {res['ratio']:.2f}x")
  xf = jx["xla_flops"]
  print(f"  model FLOPs/step {flops['total'] / 1e9:.2f} G (attention "
        f"{sum(v for k, v in flops.items() if k.startswith('attention')) / 1e9:.2f} G); XLA "
        f"cost_analysis {'n/a' if xf is None else f'{xf / 1e9:.2f} G'}")
  print(f"  fp32 matmul peak (2048^3): JAX {peak['jax'] / 1e9:.1f} GFLOP/s, torch "
        f"{peak['torch'] / 1e9:.1f} GFLOP/s")
  for name in ("bltjax", "hf"):
    r = res[name]
    print(f"  MFU {name:6s} {100 * r['mfu']:5.1f}%  ({r['model_flops_per_s'] / 1e9:.1f} "
          "GFLOP/s of model FLOPs, against the JAX peak)")
  if args.json:
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
