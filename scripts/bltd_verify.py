"""BLT-D end-to-end check on CPU: a tiny BLT-D against a BLT trained identically (docs/bltd.md).

  python scripts/bltd_verify.py [--workdir runs/bltd_verify] [--steps 400] [--block_size 8]
                                [--block_input encoder_states] [--entropy_export DIR]

Stages (finished runs resume from their checkpoints, so re-running only re-evaluates):
  0. data            the `make data` corpus when built (45 MB of training text), else the committed
                     fixture (small: long runs overfit it); --data to choose
  1. entropy model   configs/entropy_tiny.py (or --entropy_export DIR)
  2. threshold       θ with P(H > θ) = 1/4 on training text: ~4-byte patches, as in Fast BLT
  3. BLT-D           configs/bltd_tiny.py through bltjax.training.train (the train.py code path)
     BLT             the same config, same data order and seed, diffusion.block_size = 0
  4. causal bpb      train.py's held-out evaluation (same windows for both models)
  5. masked bytes    BLT-D at t = 0.5 on the held-out windows: accuracy and nats per masked byte,
                     against the unigram baseline (the most frequent training byte; its cross-
                     entropy) and the oracle unigram (the most frequent masked byte itself)
  6. --finetune_steps N: a third run, BLT-D started from the trained BLT (`train.init_from_blt`,
                     docs/choices.md, Fast BLT #17) for N more steps, evaluated like stage 4-5
Writes WORKDIR/results.json and prints a summary.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TARGET_PATCH = 4.0


def load_config(name: str):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def train_batches(data_cfg: Any, seq_len: int, n: int, seed: int = 123) -> list[dict]:
  from bltjax.data import pipeline

  it = pipeline.make_train_iterator(data_cfg, seq_len=seq_len, batch_size=16, seed=seed,
                                    process_index=0, process_count=1)
  return [next(it) for _ in range(n)]


def masked_eval(config, params: dict, ent_export: Path, counts: np.ndarray, t: float,
                seeds: int) -> dict[str, float]:
  """BLT-D block reconstruction at noise level t on train.py's held-out windows."""
  import jax
  import jax.numpy as jnp

  from bltjax import weights
  from bltjax.training import diffusion, losses, train, train_config

  r = train_config.resolve(config, jax.device_count())
  cfg = r.model
  _, ent = weights.load_checkpoint(ent_export)
  full = {**params, "entropy_model": ent["entropy_model"]}

  @jax.jit
  def run(p, batch, key):
    batch = dict(batch, start=losses.train_patch_starts(p, cfg, batch))
    out = diffusion.bltd_forward(p, cfg, batch, key, max_patches=r.max_patches, t=t)
    logp = jax.nn.log_softmax(out["block_logits_BxMxZxV"], axis=-1)
    tgt = out["blocks"]["ids_BxMxZ"]
    nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
    return out["mask_BxMxZ"], tgt, jnp.argmax(logp, axis=-1), nll

  probs = (counts + 1.0) / (counts + 1.0).sum()
  mode = int(np.argmax(counts))
  hits = uni_hits = n = 0
  nll_sum = uni_nll = 0.0
  tgts = []
  for batches in train.eval_sets(r).values():
    for b in batches:
      for sd in range(seeds):
        mask, tgt, pred, nll = (np.asarray(x) for x in run(full, b, jax.random.key(sd)))
        tm = tgt[mask]
        n += tm.size
        hits += int((pred[mask] == tm).sum())
        uni_hits += int((tm == mode).sum())
        nll_sum += float(nll[mask].sum())
        uni_nll += float(-np.log(probs[tm]).sum())
        tgts.append(tm)
  tgts = np.concatenate(tgts)
  oracle = np.bincount(tgts, minlength=260).max() / max(tgts.size, 1)
  return dict(t=t, masked_bytes=n, masked_acc=hits / max(n, 1),
              unigram_acc=uni_hits / max(n, 1), oracle_unigram_acc=float(oracle),
              masked_nats=nll_sum / max(n, 1), unigram_nats=uni_nll / max(n, 1))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--workdir", default=str(REPO / "runs" / "bltd_verify"))
  ap.add_argument("--entropy_export", default="", help="reuse a trained entropy model")
  ap.add_argument("--steps", type=int, default=0, help="0: the config's train.steps")
  ap.add_argument("--block_size", type=int, default=0, help="0: the config's block size")
  ap.add_argument("--block_input", default="", help="tok_embeddings | encoder_states ('': config)")
  ap.add_argument("--t", type=float, default=0.5)
  ap.add_argument("--seeds", type=int, default=4, help="noise draws per held-out window")
  ap.add_argument("--export", action="store_true",
                  help="also write WORKDIR/{bltd,blt}/export (for decode.py and the benchmarks)")
  ap.add_argument("--finetune_steps", type=int, default=0,
                  help="also train BLT-D from the trained BLT's weights for this many steps")
  ap.add_argument("--data", default="auto",
                  help="default (the `make data` corpus) | fixture | auto: default when built")
  a = ap.parse_args()

  from bltjax.training import train

  wd = Path(a.workdir)
  wd.mkdir(parents=True, exist_ok=True)
  res: dict[str, Any] = {"seconds": {}}
  t0 = time.time()
  ent_export = Path(a.entropy_export) if a.entropy_export else wd / "entropy" / "export"
  if not (ent_export / "params").is_dir() and not a.entropy_export:
    c = load_config("entropy_tiny")
    c.train.update(progress=False)
    train.train_and_evaluate(c, wd / "entropy")
  res["seconds"]["entropy"] = time.time() - t0

  from bltjax.data import corpus
  from bltjax.demo import calibrate_threshold

  source = corpus.default_source() if a.data == "auto" else a.data
  res["data"] = source
  base = load_config("bltd_tiny")
  base.data.source = source
  theta, mean_len = calibrate_threshold(ent_export, base.data, TARGET_PATCH, batches=8,
                                        seq_len=base.train.seq_len, batch_size=16)
  res["patcher"] = dict(threshold=theta, mean_patch_len_train=mean_len)
  print(f"[bltd_verify] θ = {theta:.4f} nats -> mean patch {mean_len:.2f} bytes", flush=True)
  counts = np.zeros(260)
  for b in train_batches(base.data, base.train.seq_len, 64, seed=7):
    tv = b["valid"][:, 1:] & (b["ids"][:, 1:] != 1)
    counts += np.bincount(b["ids"][:, 1:][tv], minlength=260)

  def run_config(**train):
    """bltd_tiny on this data and θ, with the command line's block options."""
    c = load_config("bltd_tiny")
    c.data.source = source
    c.model.patcher.update(threshold=theta)
    c.train.update(entropy_checkpoint=str(ent_export), progress=False, **train)
    if a.block_size:
      c.model.diffusion.block_size = a.block_size
    if a.block_input:
      c.model.diffusion.block_input = a.block_input
    return c

  runs = {}
  for name in ("bltd", "blt"):
    c = run_config(export=a.export or (name == "blt" and a.finetune_steps > 0))
    if a.steps:
      c.train.steps = a.steps
    if name == "blt":
      c.model.diffusion.block_size = 0
    t1 = time.time()
    out = train.train_and_evaluate(c, wd / name)
    res["seconds"][name] = time.time() - t1
    runs[name] = (c, out)
    res[name] = dict(eval={k.removeprefix("eval/"): v for k, v in out["eval"].items()},
                     train=out["train"], block_size=c.model.diffusion.block_size,
                     block_input=c.model.diffusion.block_input, steps=c.train.steps)

  if a.finetune_steps:
    c = run_config(export=False, steps=a.finetune_steps,
                   init_from_blt=str(wd / "blt" / "export"))
    t1 = time.time()
    out = train.train_and_evaluate(c, wd / "bltd_from_blt")
    res["seconds"]["bltd_from_blt"] = time.time() - t1
    res["bltd_from_blt"] = dict(
      eval={k.removeprefix("eval/"): v for k, v in out["eval"].items()}, train=out["train"],
      steps=a.finetune_steps, masked=masked_eval(c, out["params"], ent_export, counts, a.t,
                                                 a.seeds))
    res["bltd_from_blt"]["causal_bpb_ratio"] = (res["bltd_from_blt"]["eval"]["mean_bpb"]
                                                / res["blt"]["eval"]["mean_bpb"])

  c, out = runs["bltd"]
  res["masked"] = masked_eval(c, out["params"], ent_export, counts, a.t, a.seeds)
  d_bpb = res["bltd"]["eval"]["mean_bpb"]
  b_bpb = res["blt"]["eval"]["mean_bpb"]
  res["causal_bpb_ratio"] = d_bpb / b_bpb
  res["unigram_entropy_bits"] = float(-(counts / counts.sum() * np.log2(
    np.where(counts > 0, counts / counts.sum(), 1))).sum())
  (wd / "results.json").write_text(json.dumps(res, indent=1))
  m = res["masked"]
  print(json.dumps(dict(bltd_bpb=d_bpb, blt_bpb=b_bpb, ratio=res["causal_bpb_ratio"],
                        **{k: m[k] for k in ("masked_acc", "unigram_acc", "oracle_unigram_acc",
                                             "masked_nats", "unigram_nats")}), indent=1))
  ok = "yes" if res["causal_bpb_ratio"] <= 1.10 else "NO"
  print(f"[bltd_verify] causal bpb BLT-D / BLT = {res['causal_bpb_ratio']:.3f} (within 10%: {ok}); "
        f"masked bytes at t = {m['t']}: accuracy {m['masked_acc']:.3f} = "
        f"{m['masked_acc'] / max(m['unigram_acc'], 1e-9):.2f}x unigram {m['unigram_acc']:.3f}, "
        f"{m['masked_nats']:.3f} vs unigram {m['unigram_nats']:.3f} nats/byte; "
        f"{math.fsum(res['seconds'].values()):.0f}s")
  if a.finetune_steps:
    f = res["bltd_from_blt"]
    print(f"[bltd_verify] BLT-D from BLT (+{a.finetune_steps} steps): causal bpb "
          f"{f['eval']['mean_bpb']:.3f} = {f['causal_bpb_ratio']:.3f}x BLT; masked accuracy "
          f"{f['masked']['masked_acc']:.3f}, {f['masked']['masked_nats']:.3f} nats/byte")


if __name__ == "__main__":
  main()
