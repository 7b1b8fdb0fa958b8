"""Held-out bits per byte per domain (causal path), the BLT paper's (arXiv 2412.09871) metric.

Documents come from the data layer (`bltjax.data.make_eval_iterator`): the held-out splits of
the materialised corpus (`--data default`, after `make data`) or of the committed fixture
(`--data fixture`); the default is whichever `corpus.default_source()` finds. Each document is
[BOS] bytes [EOS]: every byte and the closing EOS are scored (the EOS NLL counts, the byte count
excludes it, as the data layer defines BPB), in windows of --window bytes by `score.py`'s rule.
`--limit N` keeps the first N documents of each domain, `--max-doc-bytes N` their first N
bytes (then without EOS).
"""

from __future__ import annotations

import math
from typing import Any

from bltjax.eval.runner import UsageError

NAME = "bpb"
KIND = "likelihood"
MAX_NEW = 0


def add_args(ap) -> None:
  g = ap.add_argument_group("bpb")
  g.add_argument("--domains", default=None,
                 help="comma-separated held-out domains (default: all, e.g. novel,drama,code)")
  g.add_argument("--max-doc-bytes", type=int, default=None, help="score only each document's "
                 "first N bytes")


def examples(a) -> list[dict[str, Any]]:
  from bltjax import data  # noqa: PLC0415

  dcfg = data.default_data_config(source=a.data)
  try:
    have = data.heldout_domains(dcfg)
  except (FileNotFoundError, ValueError) as e:
    raise UsageError(f"--data {a.data}: {e}") from e
  domains = [d.strip() for d in a.domains.split(",") if d.strip()] if a.domains else have
  bad = [d for d in domains if d not in have]
  if bad or not domains:
    raise UsageError(f"--domains: {', '.join(bad) or '(none)'} not among {', '.join(have)}")
  if a.max_doc_bytes is not None and a.max_doc_bytes < 1:
    raise UsageError("--max-doc-bytes: must be positive")
  out = []
  for d in domains:
    for doc in data.make_eval_iterator(dcfg, domain=d, max_docs=a.limit):
      ids, n = doc["ids"], doc["num_bytes"]
      if a.max_doc_bytes is not None and n > a.max_doc_bytes:
        ids, n = ids[:1 + a.max_doc_bytes], a.max_doc_bytes
      out.append({"id": f"{d}/{doc['name']}", "group": d, "name": doc["name"], "ids": ids,
                  "bytes": n})
  return out


def process(ctx, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
  nll = ctx.scorer().nll([ex["ids"][1:] for ex in batch])
  out = []
  for ex, v in zip(batch, nll, strict=True):
    nats = float(v.sum())
    out.append({"id": ex["id"], "group": ex["group"], "name": ex["name"], "bytes": ex["bytes"],
                "nll_nats": nats, "bpb": nats / (math.log(2) * max(ex["bytes"], 1))})
  return out


def score(records: list[dict[str, Any]], a) -> dict[str, Any]:
  def bpb(rs):
    return sum(r["nll_nats"] for r in rs) / (math.log(2) * max(1, sum(r["bytes"] for r in rs)))

  out = {g: {"bpb": bpb(rs), "bytes": sum(r["bytes"] for r in rs), "docs": len(rs)}
         for g in sorted({r["group"] for r in records})
         for rs in [[r for r in records if r["group"] == g]]}
  out["all"] = {"bpb": bpb(records), "bytes": sum(r["bytes"] for r in records),
                "docs": len(records)}
  return out


def settings(a) -> dict[str, Any]:
  return {"data": a.data, "domains": a.domains, "max_doc_bytes": a.max_doc_bytes,
          "window": a.window}
