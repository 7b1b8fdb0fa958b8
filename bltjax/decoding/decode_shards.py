"""Decoding with several processes: per-process output shards and the fold into one JSONL.

Process i of n writes its rows (input rows i, i + n, i + 2n, ...) to `OUTPUT.part-0000i-of-0000n`.
When all are done, process 0 folds the shards into OUTPUT: the records already there stay as they
are, then every shard record whose id OUTPUT does not hold yet, in input order, and the shards are
deleted. A run killed mid-way leaves shards behind; `--resume` (with any process count) folds them
first, so each id is decoded, and written, exactly once. A line cut by the kill is dropped (its id
is decoded again).
"""

from __future__ import annotations

import json
from typing import Any

from etils import epath

from bltjax import paths

SUFFIX = ".part-"


def shard_path(out: epath.Path, index: int, count: int) -> epath.Path:
  return out.parent / f"{out.name}{SUFFIX}{index:05d}-of-{count:05d}"


def shards(out: epath.Path) -> list[epath.Path]:
  """Shards of `out` left by any process count, in name order."""
  if not out.parent.exists():
    return []
  return sorted(out.parent.glob(f"{out.name}{SUFFIX}*-of-*"), key=lambda p: p.name)


def id_key(rid: Any) -> str:
  return json.dumps(rid)


def records(path: epath.Path) -> list[tuple[str, dict[str, Any]]]:
  """(line, record) of every complete JSON line of `path` (none if it does not exist)."""
  if not path.exists():
    return []
  out = []
  for line in path.read_text(encoding="utf-8").split("\n"):
    try:
      rec = json.loads(line)
    except ValueError:
      continue  # cut by a crash
    if isinstance(rec, dict):
      out.append((line, rec))
  return out


def done_ids(out: epath.Path) -> set[str]:
  """Ids with a result (not an error record) in `out` or in any of its shards."""
  done = set()
  for p in [out, *shards(out)]:
    done.update(id_key(r.get("id")) for _, r in records(p) if "error" not in r)
  return done


def input_order(path: epath.Path) -> dict[str, int]:
  """id -> first line number of the input (lines without a readable id are skipped)."""
  order: dict[str, int] = {}
  text = path.read_bytes().decode("utf-8", errors="surrogateescape")
  for lineno, line in enumerate(text.split("\n"), 1):
    try:
      rec = json.loads(line)
    except ValueError:
      continue
    if isinstance(rec, dict) and "id" in rec:
      order.setdefault(id_key(rec["id"]), lineno)
  return order


def fold(out: epath.Path, order: dict[str, int]) -> int:
  """Appends the shards' new results to `out` in input order, then deletes the shards.

  Returns:
    The number of records added.
  """
  parts = shards(out)
  if not parts:
    return 0
  kept = records(out)
  have = {id_key(r.get("id")) for _, r in kept if "error" not in r}
  new: dict[str, str] = {}
  for p in parts:
    for line, r in records(p):
      k = id_key(r.get("id"))
      if "error" not in r and k not in have and k not in new:
        new[k] = line
  added = sorted(new, key=lambda k: (order.get(k, len(order) + 1), k))
  text = "".join(line + "\n" for line, _ in kept) + "".join(new[k] + "\n" for k in added)
  # Whole file through a temporary sibling and a rename: a kill here leaves the old output and
  # the shards, and the next --resume folds them again.
  if paths.is_url(out):  # an object is replaced whole by one write
    out.write_text(text, encoding="utf-8")
  else:
    tmp = out.parent / f".{out.name}.fold"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
  for p in parts:
    p.unlink()
  return len(added)
