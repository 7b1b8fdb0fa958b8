"""Decode bytes/s of this checkout's engine against the engine it replaced (commit 306ec37).

Runs one checkout per process (the two APIs cannot share one): bench_20m random weights,
entropy patching at the median entropy (about 2-byte patches), 64-byte prompts from the test
fixtures, 256 new bytes without stopping at EOS, compile outside the timed region, median of 5.
AR at batch 1 and 8, BLT-S k = 8, BLT-D-8 and BLT-DV-8 one-step (batch 1).

  git worktree add /tmp/old 306ec37
  python benchmarks/engine_vs_previous.py --checkout /tmp/old   # prints a JSON line
  python benchmarks/engine_vs_previous.py                      # this checkout

Alternate the two a few times on a quiet machine and compare medians (same prompts, weights).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

NEW = 256
CASES = ("ar b1", "ar b8", "blts k8", "bltd one_step", "bltdv one_step")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--checkout", default=str(Path(__file__).resolve().parents[1]),
                  help="repository checkout whose bltjax is timed")
  ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: "
                  + ", ".join(CASES))
  args = ap.parse_args()
  root = Path(args.checkout).resolve()
  sys.path.insert(0, str(root))
  import jax
  import jax.numpy as jnp

  from bltjax import model
  from bltjax.config import BLTConfig, DiffusionConfig

  spec = importlib.util.spec_from_file_location("bench", root / "configs" / "bench_20m.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = BLTConfig.from_dict(mod.get_config().model.to_dict())
  cfg = cfg.replace(patcher=dataclasses.replace(cfg.patcher, mode="entropy", threshold=1.0),
                    global_=dataclasses.replace(cfg.global_, window=None))
  params = model.init_params(cfg, jax.random.key(0))
  ids = jnp.asarray(np.random.default_rng(0).integers(4, 260, (1, 256)), jnp.int32)
  med = float(jnp.median(model.entropies(params, cfg, ids)))
  cfg = cfg.replace(patcher=dataclasses.replace(cfg.patcher, threshold=med))
  fixtures = sorted(p for p in (root / "tests" / "fixtures").rglob("*") if p.is_file())
  corpus = b"".join(p.read_bytes() for p in fixtures)[:200_000]
  rng = np.random.default_rng(0)
  prompts = [corpus[s:s + 64] for s in rng.integers(0, len(corpus) - 64, 8)]
  cfg_d = cfg.replace(diffusion=DiffusionConfig(block_size=8, block_prefix_window=512))
  table = params["local_encoder"]["tok_embeddings"]["embedding"]
  params_d = dict(params, local_encoder=dict(
    params["local_encoder"], tok_embeddings={"embedding": jnp.concatenate([table, table[:1]])}))

  try:
    from bltjax import generation

    def run(method, ps, prm, c, **o):
      return generation.generate(prm, c, ps, method=method, max_new=NEW, stop_at_eos=False,
                                 options=generation.Options(**o))
  except ImportError:  # the previous engine's modules
    from bltjax import block_decoding, decoding, speculative

    def run(method, ps, prm, c, **o):
      if method == "ar":
        return decoding.generate(prm, c, ps, max_new=NEW, stop_at_eos=False)
      if method == "blts":
        return speculative.generate(prm, c, ps, max_new=NEW, k=o["draft_k"], stop_at_eos=False)
      return block_decoding.generate(prm, c, ps, max_new=NEW, method=method,
                                     rule=block_decoding.BlockRule(o["rule"]), stop_at_eos=False)

  cases = {"ar b1": ("ar", prompts[:1], params, cfg, {}),
           "ar b8": ("ar", prompts, params, cfg, {}),
           "blts k8": ("blts", prompts[:1], params, cfg, {"draft_k": 8}),
           "bltd one_step": ("bltd", prompts[:1], params_d, cfg_d, {"rule": "one_step"}),
           "bltdv one_step": ("bltdv", prompts[:1], params_d, cfg_d, {"rule": "one_step"})}
  out = {}
  for name in args.cases.split(","):
    method, ps, prm, c, o = cases[name]
    run(method, ps, prm, c, **o)  # compile
    times = []
    for _ in range(5):
      t = time.perf_counter()
      res = run(method, ps, prm, c, **o)
      times.append(time.perf_counter() - t)
    n = sum(len(r.new_ids) + (r.reason == "eos") for r in res)
    out[name] = round(n / float(np.median(times)), 1)
  print(json.dumps({"checkout": str(root), "bytes_per_s": out}))


if __name__ == "__main__":
  main()
