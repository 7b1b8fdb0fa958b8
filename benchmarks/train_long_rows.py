"""Long rows: N real training steps of the tiny BLT (configs/blt_tiny.py) at 8,192 bytes.

The Trainer's own step (entropy patching online, forward, backward, AdamW) on synthetic packed
documents. At this length every local stack (encoder, decoder, entropy model; window 512) runs the
segmented attention of `bltjax/modeling/kernels.py` and pooling the per-patch segment softmax; the
dense
masks would need [4 heads, 8192, 8192] fp32 arrays (1 GiB each) per layer and row. The entropy
model is randomly initialised (no export needed; its patches are as real as any).

Prints one JSON line: compile seconds, median seconds per step, bytes per second, first and last
loss, and the process's peak resident memory (ru_maxrss).

Runs on JAX's default device (a GPU or TPU when there is one); --cpu, or JAX_PLATFORMS=cpu,
keeps it on the CPU.

  python benchmarks/train_long_rows.py                       # 20 steps, 8192 bytes, 2 rows
  python benchmarks/train_long_rows.py --steps=5 --batch=1 --seq_len=16384
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(c, steps: int, log=None) -> tuple[dict, object]:
  """`steps` timed Trainer steps (after one compile step) of config `c` on synthetic rows, one
  device; returns (figures, the Trainer)."""
  import jax
  import numpy as np

  from bltjax.modeling import model, sharding
  from bltjax.training import train

  # No export: a randomly initialised entropy model patches just as well.
  if c.model.patcher.mode == "entropy":
    c.train.entropy_checkpoint = "(random)"  # resolve() asks for one; entropy_params replaces it
  cfg = train.resolve(c, 1, 1).model
  ent = model.init_params(cfg, jax.random.key(1)).get("entropy_model")
  tr = train.Trainer.create(c, tempfile.mkdtemp(prefix="train_long_rows_"),
                            devices=jax.devices()[:1], entropy_params=ent)
  state = tr.init_state()
  seq_len, batch = c.train.seq_len, c.train.batch_size
  rows = train.synthetic_batches(0, seq_len, batch)
  step = tr.make_train_step()
  losses, times, compile_s = [], [], 0.0
  with sharding.use_mesh(tr.mesh):
    for i in range(steps + 1):
      b = tr.to_global(next(rows))
      t = time.perf_counter()
      state, m = step(state, tr.frozen, b)
      jax.block_until_ready(m)
      dt = time.perf_counter() - t
      if i == 0:
        compile_s = dt
        if log:
          log(f"compiled and ran the first step in {dt:.1f}s")
      else:
        times.append(dt)
      losses.append(float(m["loss"]))
  del state
  cfg = tr.cfg
  res = dict(seq_len=seq_len, batch=batch, steps=steps, remat=cfg.remat, dtype=cfg.dtype,
             max_patches=tr.r.max_patches, compile_s=round(compile_s, 1),
             step_s_median=round(statistics.median(times), 4),
             bytes_per_s=round(batch * seq_len / statistics.median(times)),
             loss_first=round(losses[0], 4), loss_last=round(losses[-1], 4),
             finite=bool(np.all(np.isfinite(losses))))
  return res, tr


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="configs/blt_tiny.py")
  ap.add_argument("--seq_len", type=int, default=8192)
  ap.add_argument("--batch", type=int, default=2)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--remat", default=None, help="none | full | dots (default: the config's)")
  ap.add_argument("--json", default=None)
  ap.add_argument("--cpu", action="store_true", help="run on the CPU even if an accelerator "
                  "is present (same as JAX_PLATFORMS=cpu)")
  a = ap.parse_args(argv)
  if a.cpu:  # before jax starts a backend
    os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, str(REPO))
  from absl import logging

  from benchmarks.train_memory import load_config

  logging.set_verbosity(logging.WARNING)
  c = load_config(a.config)
  c.train.seq_len, c.train.batch_size, c.train.grad_accum = a.seq_len, a.batch, 1
  c.train.rows_per_chip = 0
  if a.remat:
    c.model.remat = a.remat
  res, _ = run(c, a.steps)
  res = dict(config=a.config, **res,
             peak_rss_gib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2))
  print(json.dumps(res), flush=True)
  if a.json:
    Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
