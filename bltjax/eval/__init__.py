"""Evaluation suites: `python -m bltjax.eval --suite bpb|translation|humaneval|mc ...`.

  bpb          held-out bits per byte per domain (causal path)
  translation  k-shot translation, both directions, BLEU / chrF / chrF++ (sacrebleu)
  humaneval    0-shot code completion, pass@1 in a sandboxed subprocess; canonical-solution BPB
  mc           likelihood multiple choice, accuracy and byte-normalised accuracy

Generation suites decode with any method of `bltjax.decoding.generation` and record the NFEs and the
Eq. 8 bandwidth estimate of arXiv 2605.08044; `runner.py` holds the loop they share and
`python -m bltjax.report` turns run directories into tables and figures.
"""

import importlib

SUITES = ("bpb", "translation", "humaneval", "mc")


def suite_module(name: str):
  if name not in SUITES:
    raise ValueError(f"suite: unknown {name!r} ({' | '.join(SUITES)})")
  return importlib.import_module(f"bltjax.eval.{name}")
