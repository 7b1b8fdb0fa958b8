"""Structure of the compiled decode loop per method: what a slow host cannot time, it can count.

Compiles `runloop.loop` (the one program a `generation.generate` call runs after its prefill)
for each method on this backend, exactly as `benchmarks/fast_decode.py` would run it (random
weights in a config's geometry, fused projections, batch 1, one `--prompt-bytes` prompt,
`--max-new` bytes), and prints, without running it:

  kernels per body   top-level instructions of every while-loop body (fusions, dots, copies,
                     ...; not parameters, constants, bitcasts, tuples): on XLA:CPU each is one
                     kernel launch, so at tiny sizes, where launches dominate, a body's count
                     tracks its time (BLT-S: the outer body is one verification, the inner
                     loop one draft step; AR: the outer body is one step)
  hlo                HLO instructions of the optimised module (fused computations included), its
                     fusions and gathers
  cost               `cost_analysis()` flops and bytes accessed (XLA counts a loop body once)
  memory             `memory_analysis()` temp bytes

Deterministic, so it compares revisions on a loaded host where wall-clock A/Bs are noise
(docs/benchmarks.md, issue 21's A/B). Compare two revisions by running this file from each
checkout (copy it into an older one).

  python benchmarks/loop_structure.py --config configs/blt_tiny.py [--methods ar,blts:8]
    [--max-new 512] [--dump DIR]   # DIR: the optimised HLO text per method
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _compiled import cost, memory  # noqa: E402

# Instructions that launch nothing on XLA:CPU.
FREE = {"parameter", "constant", "bitcast", "tuple", "get-tuple-element"}
_INSTR = re.compile(r"\s*(?:ROOT\s+)?%?[\w.\-]+ = .*? ([a-z][\w\-]*)\(")


def computations(hlo: str) -> dict[str, list[str]]:
  """HLO module text -> {computation name: instruction lines}."""
  out = {}
  for block in re.split(r"\n(?=\S)", hlo):
    m = re.match(r"(?:ENTRY )?%?([\w.\-]+) ", block.split("\n", 1)[0])
    if m:
      out[m.group(1)] = block.split("\n")[1:]
  return out


def opcode(line: str) -> str | None:
  m = _INSTR.match(line)
  return m.group(1) if m else None


def while_bodies(comps: dict[str, list[str]]) -> list[tuple[str, int]]:
  """(body name, kernels) of every while loop, in program order."""
  out = []
  for lines in comps.values():
    for line in lines:
      if opcode(line) == "while":
        body = re.search(r"body=%?([\w.\-]+)", line).group(1)
        n = sum(1 for b in comps.get(body, []) if (op := opcode(b)) and op not in FREE)
        out.append((body, n))
  return out


def figures(compiled) -> dict:
  hlo = compiled.as_text()
  comps = computations(hlo)
  ops = collections.Counter(op for lines in comps.values() for ln in lines if (op := opcode(ln)))
  cst = cost(compiled)
  return dict(kernels_per_body=[n for _, n in while_bodies(comps)],
              hlo_instructions=sum(ops.values()), fusions=ops["fusion"], gathers=ops["gather"],
              flops=cst["flops"], bytes_accessed=cst["bytes_accessed"],
              temp_bytes=memory(compiled)["temp"]), hlo


def loop_call(params, cfg, prompt: bytes, spec, max_new: int):
  """The (args, kwargs) `generation.generate` passes to `runloop.loop` (prefill runs)."""
  from bltjax.decoding import generation, runloop

  class Captured(Exception):
    pass

  seen = {}

  def capture(*args, **kw):
    seen.update(args=args, kw=kw)
    raise Captured

  real, runloop.loop = runloop.loop, capture
  try:
    generation.generate(params, cfg, [prompt], method=spec.name, max_new=max_new,
                        options=spec.opt, stop_at_eos=False)
  except Captured:
    pass
  finally:
    runloop.loop = real
  return real, seen["args"], seen["kw"]


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", default=str(ROOT / "configs" / "blt_tiny.py"))
  ap.add_argument("--methods", default="ar,blts:8")
  ap.add_argument("--max-new", type=int, default=512)
  ap.add_argument("--prompt-bytes", type=int, default=64)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--dump", default=None, help="write each method's optimised HLO here")
  a = ap.parse_args(argv)
  import fast_decode as fd

  from bltjax.modeling import layers

  cfg, params = fd.load_random(a.config, a.seed)  # the threshold moves no instruction
  params = layers.fuse_projections(params)
  prompt = bytes(range(97, 123)) * (a.prompt_bytes // 26 + 1)
  for m in a.methods.split(","):
    spec = fd.parse_method(m)
    loop, args, kw = loop_call(params, cfg, prompt[:a.prompt_bytes], spec, a.max_new)
    fig, hlo = figures(loop.trace(*args, **kw).lower().compile())
    if a.dump:
      Path(a.dump).mkdir(parents=True, exist_ok=True)
      (Path(a.dump) / f"{m.replace(':', '_')}.hlo.txt").write_text(hlo)
    print(json.dumps(dict(method=m, **fig)), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
