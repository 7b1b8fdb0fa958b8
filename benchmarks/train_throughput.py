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
  from bltjax import patching
  from bltjax.data import pipeline

  it = pipeline.make_train_iterator(c.data, seq_len=c.train.seq_len, batch_size=c.train.batch_size,
                                    seed=0, process_index=0, process_count=1)
  b = next(it)
  lengths = b["valid"].sum(-1)
  start = patching.static_patch_starts(lengths, c.train.seq_len, 4)
  return dict(b, start=np.asarray(start))


def bench_bltjax(c, batch, steps: int, warmup: int):
  import jax

  from bltjax import model
  from bltjax import train as T

  tr = T.Trainer.create(c, tempfile.mkdtemp(prefix="bench_bltjax_"), devices=jax.devices()[:1])
  # Host copy: the step donates its state, and HF gets these same weights afterwards.
  full = jax.device_get(jax.jit(lambda k: model.init_params(tr.cfg, k))(jax.random.key(0)))
  params = {k: full[k] for k in model.BLT_KEYS}
  params = jax.device_put(params, tr.state_shardings["params"])
  opt = jax.jit(tr.tx.init, out_shardings=tr.state_shardings["opt_state"])(params)
  state = {"params": params, "opt_state": opt, "step": jax.numpy.int32(0)}
  _, first, m, compile_s, times = time_steps(tr.make_train_step(), state, tr.frozen,
                                             tr.to_global(batch), steps, warmup)
  return {"first_loss": float(first["loss"]), "compile_s": compile_s, "step_s": times,
          "last_loss": float(m["loss"])}, full, tr


def bench_hf(c, batch, full_params, cfg, steps: int, warmup: int):
  import torch
  from transformers import BltForCausalLM

  from bltjax import patching
  from bltjax.config import BOS_ID
  from bltjax.convert import hf

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
  res = {"bytes_per_step": n_bytes, "batch": list(batch["ids"].shape)}
  for name, r in (("bltjax", jx), ("hf", ht)):
    med = statistics.median(r["step_s"])
    res[name] = dict(r, median_step_s=med, bytes_per_s=n_bytes / med)
  res["ratio"] = res["bltjax"]["bytes_per_s"] / res["hf"]["bytes_per_s"]
  print(f"bench_20m, batch {res['batch'][0]} x {res['batch'][1]} bytes, fp32, static patches "
        "of 4, one AdamW step per iteration")
  print(f"  first-step loss   bltjax {jx['first_loss']:.5f}   HF {ht['first_loss']:.5f}")
  print(f"  bltjax  {res['bltjax']['bytes_per_s']:10.0f} bytes/s  "
        f"(median step {res['bltjax']['median_step_s']:.3f}s, compile {jx['compile_s']:.1f}s)")
  print(f"  HF      {res['hf']['bytes_per_s']:10.0f} bytes/s  "
        f"(median step {res['hf']['median_step_s']:.3f}s, {ht['threads']} torch threads)")
  print(f"  ratio bltjax / HF = {res['ratio']:.2f}x")
  if args.json:
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
