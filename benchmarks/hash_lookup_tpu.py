"""The hash tables' lookup and gradient scatter compiled for TPU from this CPU: per-table slices
(`hashing.hash_rows_per_table`, `add_hash_rows_per_table`) against one batched gather / scatter
(`hashing.hash_rows`, a `vmap` over the tables), at BLT-1B's table shapes.

Every figure is "compiled for TPU v5e by XLA, predicted, not measured" (libtpu's compiler on the
CPU, as benchmarks/tpu_compile.py). Two isolated programs (the whole training step packs
differently: docs/accelerators.md, "Hash-table lookups"):

  decode   one lookup of 6 x 500002 x 1024 bf16 tables on one v5e chip (an encoder step's
           embedding at --batch rows): temp bytes and bytes accessed
  train    --micro microbatches of 8 rows x 8192 bytes on v5e:2x4, the fp32 tables sharded over
           their width (128 columns per chip, as BLT-1B's step places them), rows gathered and
           their gradient scattered into the fp32 accumulator (the training step's
           `optim.RowGradient`), with the accumulator's rows as the table's or padded to whole
           8-row tiles: temp bytes per chip

  python benchmarks/hash_lookup_tpu.py [--batch 1 64] [--micro 4] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from _compiled import cost, memory  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from tpu_compile import topology_devices  # noqa: E402

from bltjax.modeling import hashing  # noqa: E402

T, V, D = 6, 500002, 1024  # BLT-1B: n-gram sizes 3..8, 500002 rows, encoder width 1024
GIB = 2**30


def batched_add(acc_TxVxD, ids_BxSxT, g_BxSxTxD):
  return jax.vmap(lambda a_VxD, i_BxS, g_BxSxD: a_VxD.at[i_BxS].add(g_BxSxD),
                  in_axes=(0, 2, 2))(acc_TxVxD, ids_BxSxT, g_BxSxTxD)


def figures(compiled) -> dict:
  return {"temp_gib": round(memory(compiled)["temp"] / GIB, 3),
          "bytes_accessed_gb": round(cost(compiled)["bytes_accessed"] / 1e9, 3)}


def decode(batch: int) -> list[dict]:
  dev = jax.sharding.SingleDeviceSharding(topology_devices("v5e:1x1")[0])
  out = []
  for name, rows in (("per-table slices", hashing.hash_rows_per_table),
                     ("batched", hashing.hash_rows)):
    def f(table, ids, w, rows=rows):
      return jnp.sum(rows(table, ids) * w[..., None], axis=2)

    c = jax.jit(f, in_shardings=(dev,) * 3, out_shardings=dev).lower(
      jax.ShapeDtypeStruct((T, V, D), jnp.bfloat16), jax.ShapeDtypeStruct((batch, 1, T), jnp.int32),
      jax.ShapeDtypeStruct((batch, 1, T), jnp.bfloat16)).compile()
    out.append({"program": "decode", "lookup": name, "batch": batch, **figures(c)})
  return out


def train(micro: int) -> list[dict]:
  mesh = Mesh(np.array(topology_devices("v5e:2x4")).reshape(8), ("fsdp",))
  table_sh = NamedSharding(mesh, P(None, None, "fsdp"))  # the width over the chips
  ids_sh = NamedSharding(mesh, P(None, "fsdp"))
  out = []
  for name, rows, add, rows_acc in (
      ("per-table slices", hashing.hash_rows_per_table, hashing.add_hash_rows_per_table, V),
      ("batched", hashing.hash_rows, batched_add, V),
      ("batched, padded accumulator", hashing.hash_rows, batched_add, -(-V // 8) * 8)):
    def step(table, ids_NxBxSxT, rows=rows, add=add, rows_acc=rows_acc):
      def body(acc, ids):
        g = jnp.tanh(rows(table, ids)) * 2.0  # stands in for the rows' gradient
        return add(acc, ids, g), None

      acc = jax.lax.with_sharding_constraint(jnp.zeros((T, rows_acc, D), jnp.float32), table_sh)
      acc, _ = jax.lax.scan(body, acc, ids_NxBxSxT)
      return acc[:, :V]

    c = jax.jit(step, in_shardings=(table_sh, ids_sh), out_shardings=table_sh).lower(
      jax.ShapeDtypeStruct((T, V, D), jnp.float32),
      jax.ShapeDtypeStruct((micro, 8, 8192, T), jnp.int32)).compile()
    out.append({"program": "train", "lookup": name, "micro": micro, **figures(c)})
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--batch", type=int, nargs="+", default=[1, 64])
  ap.add_argument("--micro", type=int, default=4)
  ap.add_argument("--json", default=None)
  a = ap.parse_args(argv)
  res = [r for b in a.batch for r in decode(b)] + train(a.micro)
  for r in res:
    print(json.dumps(r))
  if a.json:
    Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
