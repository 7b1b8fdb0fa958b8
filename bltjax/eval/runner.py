"""The loop every suite shares: run directory, resume, batching, generation, NFEs, results.json.

A suite module (bpb, translation, humaneval, mc) provides

  NAME, KIND           "generate" (decodes with --method) or "likelihood" (causal scoring only)
  MAX_NEW              default --max-new-bytes
  add_args(ap)         its own options
  examples(a)          [{"id": str, ...}] in order, --limit applied (raises UsageError)
  process(ctx, batch)  one record (JSON-able dict with "id") per example of the batch
  score(records, a)    the scores from all records
  settings(a)          its options, for results.json and the resume check

Records are appended to RUN_DIR/examples.jsonl and flushed as each batch finishes, so
`--resume` skips the ids already there and the final scores always come from every line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

EXAMPLES = "examples.jsonl"
RESULTS = "results.json"
SETTINGS = "settings.json"
# Options that may change between a run and its --resume without changing the results.
_RESUMABLE = ("limit", "batch_size", "warmup", "exec_workers")


class UsageError(Exception):
  """A bad option, file or directory: the CLI prints the message on one line, exit status 2."""


@dataclasses.dataclass
class Context:
  """What a suite's `process` needs: the model (None for --completions scoring) and options."""

  args: Any
  method: str
  cfg: Any = None
  params: Any = None
  opt: Any = None
  counts: Any = None
  _scorer: Any = None
  _warm: bool = False

  def scorer(self):
    if self._scorer is None:
      from bltjax.eval.likelihood import Scorer  # noqa: PLC0415

      self._scorer = Scorer(self.params, self.cfg, window=self.args.window,
                            batch=self.args.batch_size)
    return self._scorer

  def generate(self, batch: list[dict[str, Any]], prompts: list[bytes],
               stops: tuple[bytes, ...]) -> list[dict[str, Any]]:
    """Decodes the prompts with --method; per row: completion, NFEs, Eq. 8 GB, seconds share."""
    from bltjax.decoding import generation, nfe  # noqa: PLC0415
    from bltjax.decoding.decode import row_seed  # noqa: PLC0415

    a = self.args
    seeds = [row_seed(a.seed, ex["id"]) for ex in batch]
    run = lambda: generation.generate(self.params, self.cfg, prompts, method=self.method,
                                      max_new=a.max_new_bytes, options=self.opt, stops=stops,
                                      seeds=seeds)
    if a.warmup and not self._warm:
      run()  # compile outside the timed call, so bytes/s is the steady-state speed
      self._warm = True
    t0 = time.perf_counter()
    res = run()
    dt = (time.perf_counter() - t0) / len(batch)
    out = []
    for g in res:
      rec = {"completion": g.data.decode("utf-8", errors="replace"), "new_bytes": len(g.data),
             "stop_reason": g.reason, "nfe": g.nfe,
             "est_bandwidth_gb": nfe.bandwidth_gb(g.nfe["decoder"], g.nfe["encoder_global"],
                                                  self.counts),
             "seconds": round(dt, 6)}
      rec.update(generation.stats(self.method, g, self.cfg, self.opt))
      out.append(rec)
    return out


def read_records(path: Path) -> list[dict[str, Any]]:
  """Every complete record of examples.jsonl (a line cut by a crash is dropped), last per id."""
  recs: dict[str, dict[str, Any]] = {}
  if path.exists():
    for line in path.read_text(encoding="utf-8").splitlines():
      try:
        rec = json.loads(line)
      except ValueError:
        continue
      if isinstance(rec, dict) and "id" in rec:
        recs[rec["id"]] = rec
  return list(recs.values())


def _drop_partial_line(path: Path) -> None:
  # An interrupted write leaves a line without its newline; the next append must not extend it.
  data = path.read_bytes()
  if data and not data.endswith(b"\n"):
    path.write_bytes(data[:data.rfind(b"\n") + 1])


def prepare_dir(out: Path, settings: dict[str, Any], resume: bool, overwrite: bool) -> None:
  """Creates RUN_DIR, or checks that a resumed run has the same settings."""
  ex, st = out / EXAMPLES, out / SETTINGS
  if out.exists() and not out.is_dir():
    raise UsageError(f"--output {out}: exists and is not a directory")
  if ex.exists() and not (resume or overwrite):
    raise UsageError(f"--output {out}: already holds {EXAMPLES}; pass --resume to continue it "
                     "or --overwrite to start again")
  if resume and st.exists():
    try:
      old = json.loads(st.read_text())
    except ValueError as e:
      raise UsageError(f"{st}: unreadable ({e})") from e
    keys = sorted(k for k in set(old) | set(settings) if k not in _RESUMABLE
                  and old.get(k) != settings.get(k))
    if keys:
      raise UsageError(f"--resume {out}: settings differ from the first run in {', '.join(keys)}")
  out.mkdir(parents=True, exist_ok=True)
  if ex.exists():
    if resume:
      _drop_partial_line(ex)
    else:
      ex.unlink()
  (out / RESULTS).unlink(missing_ok=True)
  st.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")


def _mean(xs: list[float]) -> float | None:
  return sum(xs) / len(xs) if xs else None


def _mean_tree(dicts: list[dict[str, Any]]) -> dict[str, Any]:
  """Per-key means of equally shaped dicts of numbers (nested: the NFE `passes`)."""
  return {k: _mean_tree([d[k] for d in dicts]) if isinstance(v, dict)
          else _mean([d[k] for d in dicts]) for k, v in dicts[0].items()}


def efficiency(records: list[dict[str, Any]]) -> dict[str, Any]:
  """The paper's per-example means (arXiv 2605.08044 §7-§8) plus measured speed."""
  gen = [r for r in records if "nfe" in r]
  if not gen:
    return {}
  out: dict[str, Any] = {
    "nfe": _mean_tree([r["nfe"] for r in gen]),
    "est_bandwidth_gb": _mean([r["est_bandwidth_gb"] for r in gen]),
    "new_bytes": sum(r["new_bytes"] for r in gen),
    "wall_seconds": sum(r["seconds"] for r in gen),
  }
  out["bytes_per_second"] = (out["new_bytes"] / out["wall_seconds"]
                             if out["wall_seconds"] > 0 else None)
  for kind in ("speculation", "blocks"):
    rows = [r[kind] for r in gen if kind in r]
    if rows:
      out[kind] = {k: _mean([x[k] for x in rows]) for k in rows[0]}
  return out


def summarize(suite, a, settings: dict[str, Any], records: list[dict[str, Any]],
              extra: dict[str, Any]) -> dict[str, Any]:
  res = {"suite": suite.NAME, "method": a.method, "kind": suite.KIND, "settings": settings,
         "n": len(records), "scores": suite.score(records, a), **extra}
  res.update(efficiency(records))
  groups = sorted({r["group"] for r in records if "group" in r})
  if groups and suite.KIND == "generate":
    res["groups"] = {g: efficiency([r for r in records if r.get("group") == g]) for g in groups}
  return res


def run(suite, a, ctx: Context, settings: dict[str, Any], extra: dict[str, Any]) -> dict:
  """Processes every example not yet in RUN_DIR, then writes results.json from all records."""
  from tqdm import tqdm  # noqa: PLC0415

  out = Path(a.output)
  examples = suite.examples(a)
  prepare_dir(out, settings, a.resume, a.overwrite)
  path = out / EXAMPLES
  done = {r["id"] for r in read_records(path)}
  todo = [ex for ex in examples if ex["id"] not in done]
  t0 = time.perf_counter()
  bar = tqdm(total=len(todo), unit="ex", desc=f"{suite.NAME}[{a.method}]", file=sys.stderr,
             disable=a.quiet)
  with open(path, "a", encoding="utf-8") as f:
    for i in range(0, len(todo), a.batch_size):
      batch = todo[i:i + a.batch_size]
      for rec in suite.process(ctx, batch):
        f.write(json.dumps(rec, ensure_ascii=False) + "\n")
      f.flush()
      os.fsync(f.fileno())
      bar.update(len(batch))
  bar.close()
  records = read_records(path)
  res = summarize(suite, a, settings, records, extra)
  res["run_seconds"] = time.perf_counter() - t0  # this invocation only (resume: the rest)
  tmp = out / (RESULTS + ".tmp")
  tmp.write_text(json.dumps(res, indent=2, sort_keys=True, default=str) + "\n")
  tmp.replace(out / RESULTS)
  return res

