"""A BLT-D recipe on the demo's own models: fine-tune (or train jointly), then what its block stream
learnt and what it writes.

  python benchmarks/bltd_recipe.py [--run-dir runs/demo] [--block-size 8] [--steps 200]
      [--lr 6e-3] [--warmup 20] [--from-scratch] [--set KEY=JSON ...] [--out DIR]

Reads a finished `make demo` run directory (its entropy model, θ, patch budget and BLT; `python -m
bltjax.demo --run_dir DIR` makes one), trains a BLT-D-Z with the `tiny` scale's BLT-D recipe
(bltjax/reproduce.py) changed by the flags: from the BLT's weights (`train.init_from_blt`), or
with `--from-scratch` one model trained on both streams from the start (the paper's regime,
arXiv 2605.08044 §4). Then prints:

  held-out causal bpb   the BLT-D's causal path next to the BLT's (training run's evaluation)
  masked NLL per slot   `benchmarks/bltd_masked_nll.py` on the new checkpoint
  gen                   BLT-D confidence decoding at α = 0.9, T = 1 on the gen suite's prompts,
                        scored under the BLT (`bltjax.eval --suite gen`, as `make demo` runs it);
                        compare with the BLT's AR row at T = 1 (docs/demo.md)
  seconds               training wall and CPU seconds (CPU seconds stand for a quiet machine's
                        work when others share it)

docs/demo.md ("BLT-D at this scale") lists the recipes measured with it. Exits 0 with a skip line
when the run directory has no BLT (`make bench` on a fresh clone).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--run-dir", default=str(REPO / "runs" / "demo"))
  ap.add_argument("--block-size", type=int, default=8)
  ap.add_argument("--steps", type=int, default=None, help="default: the tiny scale's")
  ap.add_argument("--lr", type=float, default=None)
  ap.add_argument("--warmup", type=int, default=None)
  ap.add_argument("--from-scratch", action="store_true", help="no init_from_blt (joint training)")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                  help="a config override on top of the scale's, e.g. "
                  "model.diffusion.block_input='\"encoder_states\"'")
  ap.add_argument("--alpha", type=float, default=0.9)
  ap.add_argument("--temperature", type=float, default=1.0)
  ap.add_argument("--out", default=None, help="default: RUN_DIR/recipes/NAME")
  a = ap.parse_args(argv)
  run_dir = Path(a.run_dir)
  res_path = run_dir / "results.json"
  res = json.loads(res_path.read_text()) if res_path.is_file() else {}
  if not res.get("blt_export") or not Path(res["blt_export"]).is_dir():
    print(f"skip: no finished demo BLT in {run_dir} (run `make demo` first)")
    return 0

  from bltjax import reproduce as R
  from bltjax.data import corpus, pipeline
  from bltjax.eval.__main__ import main as eval_main
  from bltjax.training import train as T

  sc = R.SCALES["tiny"]
  over = dict(sc.bltd.overrides)
  for kv in a.set:
    key, sep, val = kv.partition("=")
    if not sep:
      print(f"error: --set {kv}: expected KEY=JSON", file=sys.stderr)
      return 2
    try:
      over[key] = json.loads(val)
    except json.JSONDecodeError as e:
      print(f"error: --set {kv}: {e}", file=sys.stderr)
      return 2
  r = sc.bltd
  r = dataclasses.replace(r, steps=a.steps or r.steps, lr=a.lr or r.lr,
                          warmup=r.warmup if a.warmup is None else a.warmup, overrides=over)
  st = R.State(scale=sc, workdir=run_dir)
  st.source = corpus.default_source()
  st.data_cfg = pipeline.default_data_config(source=st.source)
  st.entropy_export, st.threshold = Path(res["entropy_export"]), res["threshold"]
  st.max_patches = res["max_patches"]
  try:
    c = R._blt_like(st, r, block_size=a.block_size)
  except R.UsageError as e:
    print(f"error: --set: {e}", file=sys.stderr)
    return 2
  blt = Path(res["blt_export"])
  if not a.from_scratch:
    c.train.init_from_blt = str(blt)
  name = (f"z{a.block_size}-s{r.steps}-lr{r.lr:g}" + ("-scratch" if a.from_scratch else "")
          + "".join(f"-{k.rsplit('.', 1)[-1]}={v}" for k, v in over.items()
                    if sc.bltd.overrides.get(k) != v))
  out = Path(a.out) if a.out else run_dir / "recipes" / name
  t0, c0 = time.time(), time.process_time()
  o = T.train_and_evaluate(c, out)
  wall, cpu = time.time() - t0, time.process_time() - c0
  held = o["eval"]["eval/mean_bpb"]
  base = res.get("blt", {}).get("mean_bpb", float("nan"))
  print(f"{name}: {r.steps} steps, train {wall:.0f} s wall, {cpu:.0f} CPU-s")
  print(f"  held-out causal bpb {held:.3f} (BLT {base:.3f}, {100 * (held / base - 1):+.1f}%)")
  nll = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bltd_masked_nll.py"),
                        "--checkpoint", str(out / "export")], capture_output=True, text=True)
  print(nll.stdout.rstrip() or nll.stderr[-2000:])
  tail = R._gen_tail(sc, f"BLT-D-{a.block_size}", "bltd", a.temperature, blt,
                     ["--rule", "confidence", "--alpha", f"{a.alpha:g}"])
  gen_dir = out / f"gen-a{a.alpha:g}-T{a.temperature:g}"
  rc = eval_main(["--checkpoint", str(out / "export"), "--output", str(gen_dir), "--quiet", *tail])
  if rc != 0:
    return rc
  s = json.loads((gen_dir / "results.json").read_text())["scores"]
  print(f"  gen α = {a.alpha:g}, T = {a.temperature:g}: {s['gen_bpb']:.3f} ± {s['gen_bpb_se']:.3f} "
        f"bits/byte under the BLT, entropy {s['entropy']:.2f}, {s['new_bytes']} bytes")
  return 0


if __name__ == "__main__":
  sys.exit(main())
