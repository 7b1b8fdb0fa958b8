"""How often BLT-S and BLT-DV reproduce AR's greedy bytes in bf16 (default mode vs exact mode).

In the default bf16 mode (`--dtype bfloat16`: bf16 weights, compute and caches) a verification
pass over several positions and a one-position AR step may round differently, so a near-tie can
flip a byte and the continuation diverges. Exact mode (`--exact`: fp32 compute and caches over
the same bf16 weights) keeps the guarantee. For each (method, mode) over the same greedy prompts:

  =AR        fraction of prompts whose bytes equal AR's in the same mode, byte for byte
  prefix     mean common-prefix bytes with AR in the same mode (of `--max-new`)
  =AR fp32   fraction equal to fp32 AR over fp32 weights (bf16 weights change the model itself)

Weights: `--checkpoint DIR` (a BLT-D checkpoint for bltdv), else the random tiny BLT-D of the
tests (tests/model_fixtures.py `bltd_setup`: Z = 4, window 16, entropy threshold at the median;
random weights, so this measures rounding, not a trained model's margins). Prompts: `--prompts`
slices of `--prompt-bytes` bytes of the committed fixture corpus (tests/fixtures/corpus).

  python benchmarks/bf16_agreement.py [--prompts 16] [--max-new 48] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {"fp32": (None, False), "bf16": ("bfloat16", False), "exact": ("bfloat16", True)}


def prompts(n: int, size: int) -> list[bytes]:
  files = sorted(p for p in (ROOT / "tests" / "fixtures" / "corpus").rglob("*") if p.is_file())
  text = b"".join(p.read_bytes() for p in files if p.suffix in ("", ".txt", ".py", ".jsonl"))
  step = max(1, (len(text) - size) // n)
  return [text[i * step:i * step + size] for i in range(n)]


def common_prefix(a: bytes, b: bytes) -> int:
  n = 0
  for x, y in zip(a, b, strict=False):
    if x != y:
      break
    n += 1
  return n


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--checkpoint", default=None, help="bltjax BLT-D checkpoint (default: random "
                  "tiny BLT-D of the tests)")
  ap.add_argument("--prompts", type=int, default=16)
  ap.add_argument("--prompt-bytes", type=int, default=48)
  ap.add_argument("--max-new", type=int, default=48)
  ap.add_argument("--draft-k", type=int, default=4, help="blts: bytes drafted per verification")
  ap.add_argument("--methods", default="blts,bltdv")
  ap.add_argument("--json", default=None, help="write the rows here")
  a = ap.parse_args(argv)

  import jax  # noqa: PLC0415

  from bltjax import precision, weights  # noqa: PLC0415
  from bltjax.decoding import generation  # noqa: PLC0415
  from bltjax.decoding.generation import Options  # noqa: PLC0415

  if a.checkpoint:
    cfg, params = weights.load_checkpoint(a.checkpoint)
    source = f"checkpoint {a.checkpoint}"
  else:
    from tests.model_fixtures import bltd_setup  # noqa: PLC0415

    cfg, params = bltd_setup()
    source = "random tiny BLT-D (tests/model_fixtures.py bltd_setup)"
  precision.use_exact_matmuls()  # fp32 matmuls in fp32 on TPU / GPU too (bf16 ones unchanged)
  methods = [m for m in a.methods.split(",") if m]
  ps = prompts(a.prompts, a.prompt_bytes)
  opt = Options(draft_k=a.draft_k)
  out: dict[tuple[str, str], list[bytes]] = {}
  for mode, (dtype, exact) in MODES.items():
    c, p = precision.apply(cfg, params, dtype, exact=exact)
    for m in ["ar", *methods] if mode != "fp32" else ["ar"]:
      t0 = time.perf_counter()
      res = generation.generate(p, c, ps, method=m, max_new=a.max_new, options=opt)
      out[(m, mode)] = [g.data for g in res]
      print(f"# {m} {mode} ({precision.describe(c)}): {time.perf_counter() - t0:.1f} s",
            file=sys.stderr, flush=True)

  rows = []
  ref32 = out[("ar", "fp32")]
  for mode in ("bf16", "exact"):
    for m in ["ar", *methods]:
      got, ar = out[(m, mode)], out[("ar", mode)]
      rows.append({
        "method": m, "mode": mode, "prompts": len(ps),
        "equal_ar": sum(x == y for x, y in zip(got, ar, strict=True)) / len(ps),
        "mean_prefix_bytes": sum(common_prefix(x, y) for x, y in zip(got, ar, strict=True))
        / len(ps),
        "mean_bytes": sum(len(x) for x in got) / len(ps),
        "equal_ar_fp32": sum(x == y for x, y in zip(got, ref32, strict=True)) / len(ps)})
  print(f"{source}; {len(ps)} prompts of {a.prompt_bytes} B, greedy, --max-new {a.max_new}, "
        f"blts k={a.draft_k}")
  print(f"{'method':8} {'mode':6} {'=AR':>6} {'prefix':>8} {'bytes':>7} {'=AR fp32':>9}")
  for r in rows:
    print(f"{r['method']:8} {r['mode']:6} {r['equal_ar']:6.2f} {r['mean_prefix_bytes']:8.1f} "
          f"{r['mean_bytes']:7.1f} {r['equal_ar_fp32']:9.2f}")
  if a.json:
    meta = {"source": source, "prompt_bytes": a.prompt_bytes, "max_new": a.max_new,
            "draft_k": a.draft_k, "argv": sys.argv[1:],
            "backend": f"jax {jax.__version__} on {jax.devices()[0].device_kind}"}
    pathlib.Path(a.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
