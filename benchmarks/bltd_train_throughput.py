"""Training throughput (bytes/s) of BLT-D for Z in {4, 8, 16} against BLT, same train step.

Each model runs the jitted, donated `bltjax.training.train.Trainer` step (forward, backward, clip,
AdamW):
BLT with `losses.blt_loss`, BLT-D with `diffusion.bltd_loss` (selected by the config, as in
train.py). Geometry: configs/bench_20m.py by default (encoder 1x256, global 4x512, decoder 4x256)
or --config=bltd_tiny; one batch of real text (the committed fixture) with static patches of 4
given explicitly, so no patcher runs and BLT-D has ~S/4 blocks per row (Fast BLT's mean patch).
bytes/s = valid bytes per batch / median step time after warm-up; compile time is reported apart.
BLT-D's decoder sees N = S + M·Z positions (about S·(1 + Z/4)), which sets the expected cost.

  python benchmarks/bltd_train_throughput.py [--block_sizes 4,8,16] [--steps 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._timing import time_steps  # noqa: E402


def _config(name: str, block_size: int, remat: str):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.data.source = "fixture"
  c.model.patcher.update(mode="static", patch_size=4.0)
  c.model.diffusion.block_size = block_size
  c.model.remat = remat
  c.train.update(progress=False, tensorboard=False, eval_windows=0, warmup_steps=10,
                 entropy_checkpoint="")
  c.mesh.shape = (1, 1, 1)
  return c


def _batch(c) -> dict[str, np.ndarray]:
  from bltjax.data import pipeline
  from bltjax.modeling import patching

  it = pipeline.make_train_iterator(c.data, seq_len=c.train.seq_len, batch_size=c.train.batch_size,
                                    seed=0, process_index=0, process_count=1)
  b = next(it)
  start = patching.static_patch_starts(b["valid"].sum(-1), c.train.seq_len, 4)
  return dict(b, start=np.asarray(start))


def bench(c, batch, steps: int, warmup: int) -> dict:
  import jax

  from bltjax.training import train

  tr = train.Trainer.create(c, tempfile.mkdtemp(prefix="bench_bltd_"), devices=jax.devices()[:1])
  _, _, m, compile_s, times = time_steps(tr.make_train_step(), tr.init_state(), tr.frozen,
                                         tr.to_global(batch), steps, warmup)
  m = {k: float(v) for k, v in jax.device_get(m).items()}
  return {"compile_s": compile_s, "step_s": times, "median_step_s": statistics.median(times),
          "loss": m["loss"], "n_blocks": m.get("n_blocks", 0.0),
          "max_patches": tr.r.max_patches}


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--config", default="bench_20m")
  ap.add_argument("--block_sizes", default="4,8,16")
  ap.add_argument("--remat", default="none", choices=("none", "full", "dots"))
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--warmup", type=int, default=1)
  ap.add_argument("--json", default=None, help="also write the figures here")
  a = ap.parse_args(argv)
  from absl import logging

  logging.set_verbosity(logging.WARNING)
  res = {"config": a.config, "remat": a.remat, "runs": {}}
  batch = None
  for z in [0] + [int(v) for v in a.block_sizes.split(",")]:
    c = _config(a.config, z, a.remat)
    if batch is None:
      batch = _batch(c)
      res["bytes_per_step"] = int(batch["valid"].sum())
      res["batch"] = list(batch["ids"].shape)
    r = bench(c, batch, a.steps, a.warmup)
    r["bytes_per_s"] = res["bytes_per_step"] / r["median_step_s"]
    name = "blt" if z == 0 else f"bltd_z{z}"
    res["runs"][name] = r
    rel = r["bytes_per_s"] / res["runs"]["blt"]["bytes_per_s"]
    print(f"{name:9s} {r['bytes_per_s']:9.0f} bytes/s  x{rel:.2f} of BLT  (median step "
          f"{r['median_step_s']:.3f}s, compile {r['compile_s']:.1f}s, blocks/batch "
          f"{r['n_blocks']:.0f})", flush=True)
  print(f"{a.config}, batch {res['batch'][0]} x {res['batch'][1]} bytes, static patches of 4, "
        f"remat {a.remat}, one AdamW step per iteration")
  if a.json:
    Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
