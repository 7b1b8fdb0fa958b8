"""What a BLT-D's block stream has learnt: masked NLL per block slot next to the causal path's.

  python benchmarks/bltd_masked_nll.py [--checkpoint runs/demo/bltd-8/export] [--batches 2]

On training batches of the checkpoint's data (the `make data` corpus, else the fixture), patched
by the checkpoint's own patcher, it prints per block slot k = 0..Z-1 (block p covers bytes
x[s_p + k], arXiv 2605.08044 §3.1; docs/bltd.md):

  masked t=...   mean NLL (nats) of the masked slots at noise level t (every slot masked at t = 1;
                 at t = 0.1 nine in ten block neighbours are visible)
  causal         the clean stream's NLL of the same bytes given every byte before them

Slot 0 sees exactly what the causal path sees when it predicts x[s_p] (the prefix and the latent
o_{p-1}), so at t = 1 a trained block stream matches the causal NLL there and stays within reach
of it at later slots. A block stream still near the order-0 entropy (~3.1 nats on this corpus) at
every slot and every t has not learnt to read its context: BLT-D decoding then writes frequent
bytes (spaces). Exits 0 with a skip line when the checkpoint is absent (`make bench` on a fresh
clone).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--checkpoint", default=str(REPO / "runs" / "demo" / "bltd-8" / "export"))
  ap.add_argument("--batches", type=int, default=2)
  ap.add_argument("--seq-len", type=int, default=256)
  a = ap.parse_args(argv)
  if not (Path(a.checkpoint) / "config.json").is_file():
    print(f"skip: no BLT-D checkpoint at {a.checkpoint} (run `make demo` first)")
    return 0
  import jax
  import jax.numpy as jnp
  import numpy as np

  from bltjax import weights
  from bltjax.data import corpus, pipeline
  from bltjax.training import diffusion, losses

  cfg, params = weights.load_checkpoint(a.checkpoint)
  if not cfg.diffusion.enabled:
    print(f"error: --checkpoint {a.checkpoint}: a plain BLT (diffusion.block_size 0)",
          file=sys.stderr)
    return 2
  dcfg = pipeline.default_data_config(source=corpus.default_source())
  it = pipeline.make_train_iterator(dcfg, seq_len=a.seq_len, batch_size=8, seed=7,
                                    process_index=0, process_count=1)
  z = cfg.diffusion.block_size
  sums = {t: np.zeros(z) for t in (1.0, 0.5, 0.1)}
  counts = {t: np.zeros(z) for t in sums}
  csum, ccount = np.zeros(z), np.zeros(z)
  for i in range(a.batches):
    b = {k: jnp.asarray(v) for k, v in next(it).items()}
    b["start"] = losses.train_patch_starts(params, cfg, b)
    for t in sums:
      out = diffusion.bltd_forward(params, cfg, b, jax.random.key(i), t=t)
      lg = jax.nn.log_softmax(out["block_logits_BxMxZxV"].astype(jnp.float32), -1)
      ids, m = out["blocks"]["ids_BxMxZ"], out["mask_BxMxZ"]
      nll = -jnp.take_along_axis(lg, ids[..., None], -1)[..., 0]
      sums[t] += np.asarray(jnp.sum(nll * m, axis=(0, 1)))
      counts[t] += np.asarray(jnp.sum(m, axis=(0, 1)))
    # Causal NLL of x[q] is the clean logits at q - 1; the same bytes as the block slots.
    clean = jax.nn.log_softmax(out["clean_logits_BxSxV"].astype(jnp.float32), -1)
    tgt, tv = diffusion.clean_targets(b["ids"], out["valid_BxS"])
    cn = -jnp.take_along_axis(clean, tgt[..., None], -1)[..., 0]
    s = cn.shape[1]
    pos = out["blocks"]["pos_BxMxZ"]
    ok = out["blocks"]["target_BxMxZ"] & (pos >= 1)
    keep = ok & _at_slots(tv, pos, s)
    csum += np.asarray(jnp.sum(jnp.where(keep, _at_slots(cn, pos, s), 0.0), axis=(0, 1)))
    ccount += np.asarray(jnp.sum(keep, axis=(0, 1)))
  print(f"{a.checkpoint}: Z = {z}, {a.batches} batches of 8 x {a.seq_len}; NLL in nats per slot")
  print(f"  {'':12s} " + " ".join(f"{k:>5d}" for k in range(z)))
  for t in sums:
    print(f"  masked t={t:<3g}  " + " ".join(f"{x:5.2f}" for x in sums[t] / np.maximum(
      counts[t], 1)))
  print(f"  {'causal':12s} " + " ".join(f"{x:5.2f}" for x in csum / np.maximum(ccount, 1)))
  return 0


def _at_slots(x_BxS, pos_BxMxZ, s: int):
  """x[:, q - 1] at every block position q (the causal prediction of byte q)."""
  import jax.numpy as jnp

  idx = jnp.minimum(pos_BxMxZ, s - 1).reshape(pos_BxMxZ.shape[0], -1)
  return jnp.take_along_axis(jnp.pad(x_BxS, ((0, 0), (1, 0)))[:, :s], idx,
                             axis=1).reshape(pos_BxMxZ.shape)


if __name__ == "__main__":
  sys.exit(main())
