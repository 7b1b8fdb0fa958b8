"""One attention layer's forward + backward compiled for TPU from this host: xla vs Pallas splash.

The BLT-1B geometry's two self-attention forms (configs/blt_1b.py): the local stacks' windowed
attention over bytes (W = 512, 16 heads of 64) and the global model's causal attention over
patches (16 heads of 128), one row, bfloat16, packed documents. For each kernel
(`model.attention` = xla | pallas; docs/kernels.md) the TPU compiler's own figures:

  temp_mib     `compiled.memory_analysis().temp_size_in_bytes` (transient buffers of the layer)
  flops        `compiled.cost_analysis()["flops"]` (XLA's count; it does not see inside a Pallas
               kernel, so splash's matmuls are missing from it: compare temp, not flops)
  compile_s    wall time of lower + compile on this host

Figures are the TPU compiler's predictions for one chip ("compiled for TPU <topology> by XLA"),
not measurements on a TPU. Needs libtpu (`pip install "libtpu==0.0.42.*"` for jax 0.10.2).

  python benchmarks/attention_tpu_compile.py                       # v5e, S = 8192 bytes
  python benchmarks/attention_tpu_compile.py --seq_len=4096 --topology=v6e:2x2
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # other AOT compiles may hold the lock

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bltjax.config import TransformerConfig  # noqa: E402
from bltjax.modeling import kernels  # noqa: E402


def layer_fn(st: TransformerConfig, seq_len: int, attention: str):
  """loss(q, k, v, doc, valid) of one self-attention under `kernels.self_attention`."""

  def loss(q, k, v, doc, valid):
    pos = jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), doc.shape)
    pat = kernels.self_attention(st, pos, doc, valid, attention=attention)
    o = pat.attend(q, k, v) if isinstance(pat, kernels.LocalPattern) else \
      kernels.attend(q, k, v, pat)
    return jnp.sum(o.astype(jnp.float32))

  return jax.value_and_grad(loss, argnums=(0, 1, 2))


def compile_one(st: TransformerConfig, seq_len: int, attention: str, device) -> dict:
  sh = jax.sharding.SingleDeviceSharding(device)
  arr = lambda *shape, dt=jnp.bfloat16: jax.ShapeDtypeStruct(shape, dt, sharding=sh)  # noqa: E731
  h, g, kd = st.n_heads, st.kv_heads, st.head_dim
  t0 = time.perf_counter()
  with jax.default_matmul_precision("default"):
    c = jax.jit(layer_fn(st, seq_len, attention)).lower(
      arr(1, seq_len, h, kd), arr(1, seq_len, g, kd), arr(1, seq_len, g, kd),
      arr(1, seq_len, dt=jnp.int32), arr(1, seq_len, dt=bool)).compile()
  secs = time.perf_counter() - t0
  mem = c.memory_analysis()
  cost = c.cost_analysis()
  cost = cost[0] if isinstance(cost, list | tuple) else cost
  return dict(attention=attention, temp_mib=round(mem.temp_size_in_bytes / 2**20, 1),
              flops=float(cost.get("flops", float("nan"))), compile_s=round(secs, 1))


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--seq_len", type=int, default=8192, help="bytes per row")
  ap.add_argument("--patch", type=float, default=4.0, help="bytes per patch (global rows)")
  ap.add_argument("--topology", default="v5e:2x2", help="compiled for its first chip")
  ap.add_argument("--json", default=None, help="write the rows here")
  a = ap.parse_args(argv)
  from jax.experimental import topologies
  device = topologies.get_topology_desc(topology_name=a.topology, platform="tpu").devices[0]
  local = TransformerConfig(dim=1024, n_layers=1, n_heads=16, window=512, name="encoder")
  glob = TransformerConfig(dim=2048, n_layers=1, n_heads=16, window=None, name="global_model")
  p = int(a.seq_len / a.patch) + 1
  rows = []
  for name, st, s in (("local W=512", local, a.seq_len), ("global causal", glob, p)):
    for att in ("xla", "pallas"):
      r = dict(stack=name, seq_len=s, **compile_one(st, s, att, device))
      print(json.dumps(r), flush=True)
      rows.append(r)
  print(f"\ncompiled for TPU {a.topology} by XLA (predicted, not measured); one row, bf16, fwd+bwd")
  print("| stack | positions | kernel | temp MiB | XLA flops | compile s |")
  print("|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['stack']} | {r['seq_len']} | {r['attention']} | {r['temp_mib']} | "
          f"{r['flops']:.3g} | {r['compile_s']} |")
  if a.json:
    with open(a.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
