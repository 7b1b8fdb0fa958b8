"""Activation memory of one BLT-D (and BLT) training step at the 1B geometry.

Backend-independent: JAX's `saved_residuals` lists the arrays the forward pass keeps for the
backward pass (from abstract shapes, nothing is allocated, so 1B at 8k bytes runs on a laptop).

  resid_gib   residuals kept from forward to backward for one row (remat as configured)
  layer_gib   residuals of one decoder layer without remat: what rematerialising that layer
              materialises at once during the backward pass (the transient on top of resid)
  peak_gib    resid + layer: activation peak per row, excluding parameter-sized buffers
  formula_gib `activation_bytes` (below) for the same setting

Nothing is compiled or run: JAX's default backend (a GPU or TPU when there is one) only traces;
--cpu (or JAX_PLATFORMS=cpu) keeps even that off an accelerator another job is using.
XLA:CPU's `memory_analysis()` is not used: its scheduler ignores rematerialisation (a toy remat
MLP reports the same temp with and without it), so it says nothing about GPU/TPU.

  python benchmarks/bltd_memory.py                              # 1B, 8k bytes, Z=16, remat full
  python benchmarks/bltd_memory.py --objective=both --block_sizes=4,8,16 --dtype=bfloat16
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

if "--cpu" in sys.argv[1:]:  # before jax is imported (below): the backend is chosen once
  os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

try:  # public in newer JAX; private in 0.10
  from jax.ad_checkpoint import saved_residuals  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover
  from jax._src.ad_checkpoint import saved_residuals

from bltjax.config import (  # noqa: E402
  BLTConfig,
  DiffusionConfig,
  HashConfig,
  PatcherConfig,
  TransformerConfig,
)
from bltjax.modeling import kernels, model  # noqa: E402
from bltjax.training import diffusion  # noqa: E402

GIB = 2**30


def config_1b(block_size: int, remat: str, dtype: str, hashed: bool = False) -> BLTConfig:
  """The released BLT-1B geometry (docs/architecture.md, released geometries) with BLT-D enabled."""
  st = lambda d, L, h, f, name, w=512: TransformerConfig(d, L, h, ffn_dim=f, window=w, name=name)
  return BLTConfig(encoder=st(1024, 1, 16, 2816, "encoder"),
                   global_=st(2048, 25, 16, 5632, "global_model", None),
                   decoder=st(1024, 9, 16, 2816, "decoder"),
                   hash=HashConfig() if hashed else HashConfig(group_sizes=(), nb_functions=0),
                   patcher=PatcherConfig(mode="static", patch_size=4),
                   diffusion=DiffusionConfig(block_size=block_size), dtype=dtype, remat=remat)


def activation_bytes(cfg: BLTConfig, seq_len: int, num_blocks: int, num_patches: int,
                     act_bytes: int = 2, plan: kernels.AttnPlan | None = None) -> dict[str, float]:
  """`bltjax/training/diffusion.py`'s per-row activation-memory model (its docstring), in bytes,
  per term.

  Calibrated against JAX's saved residuals (`residuals` here): per layer and position a
  stack keeps about 6·F·b (SwiGLU) + 5·D·b (q, k, v, o, residual) + 10·D·4 (fp32 internals of
  RMSNorm and cross-attention); the dense global attention keeps 3 fp32 score arrays, the bf16
  probabilities and the bool mask per layer. With remat only each layer's inputs stay, plus one
  layer's terms while it is recomputed in the backward pass. Within ~15% of the measured
  residuals (docs/benchmarks.md "BLT-D training").
  """
  e, g, d = cfg.encoder, cfg.global_, cfg.decoder
  z, b = cfg.diffusion.block_size, act_bytes
  s, m, p = seq_len, num_blocks, num_patches
  n = s + m * z
  per = lambda st: 6 * st.hidden_dim * b + (5 * b + 40) * st.dim
  glob_attn = g.n_heads * p * p * (12 + b + 1)
  local_layer = n * per(d)
  if cfg.remat == "none":
    local = d.n_layers * local_layer + e.n_layers * s * per(e)
    glob = g.n_layers * (p * per(g) + glob_attn)
  else:
    local = (d.n_layers * n + e.n_layers * s) * d.dim * b + local_layer
    glob = g.n_layers * p * g.dim * b + p * per(g) + glob_attn
  plan = plan or kernels.make_plan(cfg, s, m)
  w = s if d.window is None else d.window
  if plan.clean_segment is None:
    clean_attn = 12 * d.n_heads * s * s
  else:
    q = plan.clean_segment
    nseg = -(-s // q) if plan.clean_chunk is None else min(plan.clean_chunk, -(-s // q))
    clean_attn = 12 * d.n_heads * nseg * q * (-(-(w - 1) // q) + 1) * q
  mc = m if plan.block_chunk is None else plan.block_chunk
  if plan.block_prefix == "dense":
    block_attn = 12 * d.n_heads * mc * z * (s + mc * z) + 2 * b * (s + mc * z) * d.dim
  else:
    bw = cfg.diffusion.block_prefix_window
    w = min(s if bw is None else bw, s)
    block_attn = 12 * d.n_heads * mc * z * (w + z) + 2 * b * mc * w * d.dim
  out = dict(local=float(local), global_=float(glob), logits=8.0 * n * cfg.vocab_size,
             attention=float(max(clean_attn, block_attn)))
  out["total"] = sum(out.values())
  return out


def _bytes(res) -> float:
  return sum(math.prod(a.shape) * a.dtype.itemsize for a, why in res
             if not why.startswith("from the argument")) / GIB


def _batch(seq_len: int):
  sds = jax.ShapeDtypeStruct
  return dict(ids=sds((1, seq_len), jnp.int32), valid=sds((1, seq_len), bool),
              doc_ids=sds((1, seq_len), jnp.int32), start=sds((1, seq_len + 1), bool))


def residuals(cfg: BLTConfig, seq_len: int, max_patches: int, objective: str) -> float:
  params = model.abstract_params(cfg)
  params = {k: params[k] for k in model.BLT_KEYS}

  def loss(p, bb):
    if objective == "bltd":
      return diffusion.bltd_loss(p, cfg, bb, jax.random.key(0), max_patches=max_patches)[0]
    logits = model.forward(p, cfg, bb["ids"], bb["start"], jnp.sum(bb["valid"], axis=1),
                           max_patches, bb["doc_ids"])
    return jnp.mean(logits[..., 0])

  return _bytes(saved_residuals(loss, params, _batch(seq_len)))


def layer_residuals(cfg: BLTConfig, seq_len: int, num_blocks: int) -> float:
  """One decoder layer over both streams without remat (the backward-pass transient)."""
  cfg = cfg.replace(remat="none")
  z, d = cfg.diffusion.block_size, cfg.decoder
  dt = jnp.dtype(cfg.dtype)
  sds = jax.ShapeDtypeStruct
  s, m = seq_len, num_blocks
  params = model.abstract_params(cfg)
  plan = kernels.make_plan(cfg, s, m)
  c = dict(pos_BxS=sds((1, s), jnp.int32), doc_BxS=sds((1, s), jnp.int32),
           valid_BxS=sds((1, s), bool), lat_BxS=sds((1, s), jnp.int32))
  bl = dict(pos_BxMxZ=sds((1, m, z), jnp.int32), valid_BxMxZ=sds((1, m, z), bool),
            start_BxM=sds((1, m), jnp.int32), doc_BxM=sds((1, m), jnp.int32),
            lat_BxM=sds((1, m), jnp.int32))
  kv = sds((1, m + 1, cfg.cross_attn_k, d.n_heads, d.head_dim), dt)

  def f(p, hc, hb, kv_i, c, bl):
    run = diffusion.two_streams(cfg, d, plan, c, bl)

    def layer0(mm, hc, hb):  # decoder layer 0 with its cross-attention, as training runs it
      dec = mm.local_decoder
      cross = model.LatentCross(dec.cross_attn_layers, lambda i: (
        model.take_latent(kv_i, c["lat_BxS"]), model.take_latent(kv_i, bl["lat_BxM"])),
        lambda x: x)
      return run(dec.layers[:1], (hc, hb), (c["pos_BxS"], bl["pos_BxMxZ"].reshape(1, m * z)),
                 cross)[0]

    return sum(jnp.sum(x.astype(jnp.float32)) for x in model.apply_blt(p, cfg, layer0, hc, hb))

  return _bytes(saved_residuals(f, params, sds((1, s, d.dim), dt), sds((1, m * z, d.dim), dt),
                                (kv, kv), c, bl))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--seq_len", type=int, default=8192)
  ap.add_argument("--block_sizes", default="16", help="comma-separated Z values")
  ap.add_argument("--patch", type=float, default=4.0, help="mean patch length: P = S / patch + 1")
  ap.add_argument("--remat", default="full", choices=("none", "full", "dots"))
  ap.add_argument("--dtype", default="bfloat16")
  ap.add_argument("--objective", default="bltd", choices=("bltd", "blt", "both"))
  ap.add_argument("--cpu", action="store_true", help="trace on the CPU (read at import time)")
  a = ap.parse_args()
  p = int(a.seq_len / a.patch) + 1
  for z in (int(v) for v in a.block_sizes.split(",")):
    cfg = config_1b(z, a.remat, a.dtype)
    for obj in (("bltd", "blt") if a.objective == "both" else (a.objective,)):
      row = dict(objective=obj, seq_len=a.seq_len, block_size=z if obj == "bltd" else 0,
                 patches=p, remat=a.remat, dtype=a.dtype)
      row["resid_gib"] = residuals(cfg, a.seq_len, p, obj)
      if obj == "bltd":
        plan = kernels.make_plan(cfg, a.seq_len, p - 1)
        row["plan"] = str(plan)
        row["layer_gib"] = layer_residuals(cfg, a.seq_len, p - 1)
        row["peak_gib"] = row["resid_gib"] + row["layer_gib"]
        est = activation_bytes(cfg, a.seq_len, p - 1, p,
                               jnp.dtype(a.dtype).itemsize, plan)
        row["formula_gib"] = est["total"] / GIB
      print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
            flush=True)


if __name__ == "__main__":
  main()
