"""Likelihood multiple choice: accuracy and byte-length-normalised accuracy.

Input JSONL, one item a line: {"context": str, "choices": [str, ...], "gold": int}. Each choice
is appended to the context as it is (put the separating space in the choice), and scored by
the log-likelihood of its bytes given BOS + context under the causal path (BLT-D checkpoints
too, as in arXiv 2605.08044's Table 1). `acc` picks the highest summed log-likelihood,
`acc_norm` the highest log-likelihood per byte of the choice.

Default data: bltjax/eval/data/mc_verse_endings.jsonl, 40 items built from public-domain KJV
verses (which of four endings follows a verse's first half; the distractors are other
verses' endings; `scripts/make_eval_data.py`). A smoke test of the harness, not a benchmark.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bltjax.eval.runner import UsageError

NAME = "mc"
KIND = "likelihood"
MAX_NEW = 0
DEFAULT_FILE = Path(__file__).parent / "data" / "mc_verse_endings.jsonl"

# (context, continuation) pairs -> per-byte NLL (nats) of each continuation.
NllFn = Callable[[Sequence[tuple[bytes, bytes]]], list[np.ndarray]]


def add_args(ap) -> None:
  g = ap.add_argument_group("mc")
  g.add_argument("--mc-file", default=None, help=f"items JSONL (default {DEFAULT_FILE.name})")


def read_items(path: Path) -> list[dict[str, Any]]:
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f"--mc-file {path}: cannot read ({e})") from e
  items = []
  for n, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      rec = json.loads(line)
      ok = (isinstance(rec["context"], str) and isinstance(rec["choices"], list)
            and len(rec["choices"]) >= 2 and all(isinstance(c, str) for c in rec["choices"])
            and isinstance(rec["gold"], int) and 0 <= rec["gold"] < len(rec["choices"]))
    except (ValueError, KeyError, TypeError):
      ok = False
    if not ok:
      raise UsageError(f"--mc-file {path}:{n}: expected {{\"context\": str, \"choices\": "
                       "[str, str, ...], \"gold\": index}")
    items.append(rec)
  if not items:
    raise UsageError(f"--mc-file {path}: no items")
  return items


def examples(a) -> list[dict[str, Any]]:
  items = read_items(Path(a.mc_file) if a.mc_file else DEFAULT_FILE)
  items = items if a.limit is None else items[:a.limit]
  return [{"id": str(i), **it} for i, it in enumerate(items)]


def choose(items: Sequence[dict[str, Any]], nll_fn: NllFn) -> list[dict[str, Any]]:
  """Scores every choice of every item in one call of `nll_fn`; one record per item."""
  pairs = [(it["context"].encode("utf-8"), c.encode("utf-8"))
           for it in items for c in it["choices"]]
  nll = iter(nll_fn(pairs))
  out = []
  for it in items:
    sums = [float(np.sum(next(nll))) for _ in it["choices"]]
    lens = [len(c.encode("utf-8")) for c in it["choices"]]
    per_byte = [s / max(n, 1) for s, n in zip(sums, lens, strict=True)]
    pred, pred_norm = int(np.argmin(sums)), int(np.argmin(per_byte))
    out.append({"id": it["id"], "gold": it["gold"], "nll_nats": sums, "bytes": lens,
                "pred": pred, "pred_norm": pred_norm, "correct": pred == it["gold"],
                "correct_norm": pred_norm == it["gold"]})
  return out


def process(ctx, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
  return choose(batch, ctx.scorer().continuation_nll)


def score(records: list[dict[str, Any]], a) -> dict[str, Any]:
  n = len(records)
  return {"acc": sum(r["correct"] for r in records) / n if n else None,
          "acc_norm": sum(r["correct_norm"] for r in records) / n if n else None, "n": n}


def settings(a) -> dict[str, Any]:
  return {"mc_file": str(Path(a.mc_file).resolve()) if a.mc_file else DEFAULT_FILE.name,
          "window": a.window}
