"""Greedy AR decoding bytes/s: bltjax's cached engine vs HF `generate(use_cache=False)`.

Same random `configs/bench_20m.py` weights on both sides (exported with bltjax.convert), entropy
patching with the threshold set to the median entropy on sample text (random weights otherwise
make every byte a patch). Prompt 64 bytes, 512 new bytes, batch 1 and 16. Both are timed after a
warm-up (bltjax: compiled; HF: one short generate), in the same process, so the ratio is robust
to a noisy machine. HF's per-step cost grows with the sequence, so timing it on `--hf-new-bytes`
(< 512) favours HF: the reported ratio is a lower bound.

  .venv/bin/python benchmarks/decode_throughput.py [--hf-new-bytes 128]
"""

import argparse
import dataclasses
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bltjax.config import BLTConfig  # noqa: E402
from bltjax.decoding import generation  # noqa: E402
from bltjax.modeling import model  # noqa: E402


def load_config() -> BLTConfig:
  spec = importlib.util.spec_from_file_location("bench", ROOT / "configs" / "bench_20m.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = BLTConfig.from_dict(mod.get_config().model.to_dict())
  # The global model is plain causal over patches (HF export refuses a windowed global).
  return cfg.replace(patcher=dataclasses.replace(cfg.patcher, mode="entropy", threshold=1.0),
                     global_=dataclasses.replace(cfg.global_, window=None))


def prompts(n: int, length: int = 64) -> list[bytes]:
  text = (ROOT / "tests" / "fixtures").rglob("*")
  corpus = b"".join(p.read_bytes() for p in sorted(text) if p.is_file())[:200_000]
  rng = np.random.default_rng(0)
  starts = rng.integers(0, len(corpus) - length, n)
  return [corpus[s:s + length] for s in starts]


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--new-bytes", type=int, default=512)
  ap.add_argument("--hf-new-bytes", type=int, default=128)
  ap.add_argument("--batches", default="1,16")
  a = ap.parse_args()
  cfg = load_config()
  params = model.init_params(cfg, jax.random.key(0))
  sample = prompts(4, 256)
  ids = jnp.asarray([generation.encode_prompt(s) for s in sample])
  h = model.entropies(params, cfg, ids)
  cfg = cfg.replace(patcher=dataclasses.replace(cfg.patcher, threshold=float(jnp.median(h))))

  import torch
  from transformers import BltForCausalLM

  from bltjax.convert import hf as convert_hf

  torch.set_num_threads(max(1, torch.get_num_threads()))
  results = {"threshold": cfg.patcher.threshold}
  with tempfile.TemporaryDirectory() as tmp:
    convert_hf.save_hf(Path(tmp) / "hf", params, cfg)
    hf = BltForCausalLM.from_pretrained(Path(tmp) / "hf").eval()
  for b in (int(x) for x in a.batches.split(",")):
    ps = prompts(b)
    # Every row generates the full budget (EOS does not stop it), as HF's min_new_tokens below.
    generation.generate(params, cfg, ps, method="ar", max_new=a.new_bytes,
                        stop_at_eos=False)  # compile
    t = time.perf_counter()
    res = generation.generate(params, cfg, ps, method="ar", max_new=a.new_bytes,
                        stop_at_eos=False)
    dt = time.perf_counter() - t
    n_bytes = sum(len(r.new_ids) + (r.reason == "eos") for r in res)
    ours = n_bytes / dt
    patches = sum(r.nfe_enc_global for r in res)
    ids = torch.tensor([generation.encode_prompt(p) for p in ps])
    with torch.no_grad():
      hf.generate(ids, max_new_tokens=4, do_sample=False, use_cache=False, eos_token_id=2,
                  pad_token_id=0)
      t = time.perf_counter()
      out = hf.generate(ids, max_new_tokens=a.hf_new_bytes, min_new_tokens=a.hf_new_bytes,
                        do_sample=False, use_cache=False, eos_token_id=2, pad_token_id=0)
      dt_hf = time.perf_counter() - t
    theirs = (out.shape[1] - ids.shape[1]) * b / dt_hf
    results[f"batch{b}"] = {"bltjax_bytes_per_s": round(ours, 1),
                            "hf_bytes_per_s": round(theirs, 2),
                            "ratio": round(ours / theirs, 1), "bltjax_bytes": n_bytes,
                            "hf_bytes": int((out.shape[1] - ids.shape[1]) * b),
                            "bytes_per_patch": round(n_bytes / max(1, patches), 2)}
    print(json.dumps({f"batch{b}": results[f"batch{b}"]}), flush=True)
  print(json.dumps(results))


if __name__ == "__main__":
  main()
