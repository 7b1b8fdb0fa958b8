"""`make demo`: the papers' pipeline at the tiny scale on real text, on a CPU.

The same code as `python -m bltjax.reproduce --scale tiny --workdir runs/demo` (bltjax/reproduce.py
holds it): trains the entropy model, a BLT patched by it and a BLT-D-8 fine-tuned from the BLT;
prints held-out bits per byte; runs the `gen` suite (held-out prompts continued by AR and BLT-S
k = 4/8/16 on the BLT, AR, BLT-D one-step and confidence α and BLT-DV on the BLT-D, each at
T = 1, 0.7 and greedy, scored under the BLT: generative bpb, entropy, Eq. 8 GB and NFEs per
byte); prints sample continuations; writes runs/demo/report/ (report.md + PNGs)
and the `generation` rows of runs/demo/results.json (docs/demo.md). Task suites (translation,
HumanEval, MC) are not run: at this scale they score 0 / chance. Each stage announces itself
with the elapsed time and an ETA. Re-running resumes (`--fresh` starts again).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from bltjax import reproduce
from bltjax.reproduce import TARGET_PATCH, calibrate_threshold  # noqa: F401 (scripts use them)

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m bltjax.demo", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--run_dir", default=str(REPO / "runs" / "demo"))
  ap.add_argument("--fresh", action="store_true", help="delete previous demo runs first")
  ap.add_argument("--quick", action="store_true",
                  help="2%% of the training steps and 2 prompts per gen run (smoke test)")
  a = ap.parse_args(argv)
  args = ["--scale", "tiny", "--workdir", a.run_dir]
  if a.quick:
    args += ["--steps-scale", "0.02", "--limit", "gen=2"]
  if a.fresh and Path(a.run_dir).exists():
    shutil.rmtree(a.run_dir)
  return reproduce.main(args)


if __name__ == "__main__":
  sys.exit(main())
