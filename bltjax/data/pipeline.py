"""grain input pipeline: documents -> byte ids with BOS/EOS -> packed [B, S] rows (docs/data.md).

Training chain, per process:

  tfds data source(s) -> grain.MapDataset of document bytes
  -> seeded shuffle (reshuffled every epoch) [-> byte-weighted mix of domains]
  -> slice [process_index::process_count]
  -> map to int32 ids (BOS=1, byte+4, EOS=2)
  -> to_iter_dataset -> PackBytesIterDataset (concatenate, cut into S-token rows)
  -> batch B rows

Every step is deterministic from `seed`, and the returned iterator is checkpointable
(`get_state()` / `set_state()`; the state is a small JSON-able dict to store in the checkpoint).

Batch format (numpy, per process):
  ids      int32 [B, S]  token ids, 0 = padding
  valid    bool  [B, S]  True where `ids` holds a real token
  doc_ids  int32 [B, S]  1, 2, ... for each document piece within the row, 0 on padding

Padding only appears at the end of a finite run (`data.num_epochs` set).

`data_cfg` (ml_collections.ConfigDict, see `default_data_config`):
  source      "default" (materialised corpus, `make data`) | "fixture" (committed CI fixture)
              | "tfds" (any prepared tfds catalog dataset) | "files" (local .txt/.md/.py/.jsonl)
  name        default/fixture: `real_mix_v1` | `real_mix_v1_plus`; tfds: e.g. "pg19", "c4/en:3.1.0"
  split       default/fixture: "train" (all train_* splits) or names like "train_code,train_prose";
              tfds: a tfds split string, e.g. "train" or "train[:90%]"
  eval_split  tfds: split used by `make_eval_iterator`
  text_field  tfds/jsonl: feature holding the text ("text"; pg19: "book_text")
  data_dir    tfds data_dir ("" = data/tfds; fixture: a cache dir; tfds: tfds' default)
  raw_dir     manual_dir of the default builders ("" = data/raw)
  files       files source: list of globs (whole file = one document; jsonl: one per line)
  eval_files  files source: globs for `make_eval_iterator`
  weights     optional {domain: weight}: byte shares of the mix (default: proportional to size)
  num_epochs  None = repeat forever; an int ends the iterator after that many passes
  read_threads  grain read threads
  shard_by    how several processes split the data: "documents" (each packs its own slice of
              the shuffled documents; reads 1/process_count of the data) or "rows" (each packs
              the whole stream and keeps its rows of every global batch: the global batches, and
              so the run, do not depend on the process count, at process_count times the
              reading and packing work)
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import gzip
import json
import os
import pathlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import ml_collections
import numpy as np

from bltjax.config import BOS_ID, EOS_ID, OFFSET, ConfigError, ids_to_bytes

PAD_ID = 0  # Only ever in padding, where `valid` is False.

Batch = dict[str, np.ndarray]
SOURCES = ("default", "fixture", "tfds", "files")


def default_data_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The `data` config section with every key the pipeline reads (see the module docstring)."""
  cfg = ml_collections.ConfigDict()
  cfg.source = "default"
  cfg.name = "real_mix_v1"
  cfg.split = "train"
  cfg.eval_split = "validation"
  cfg.text_field = "text"
  cfg.data_dir = ""
  cfg.raw_dir = ""
  cfg.files = []
  cfg.eval_files = []
  cfg.weights = ml_collections.config_dict.placeholder(dict)
  cfg.num_epochs = ml_collections.config_dict.placeholder(int)
  cfg.read_threads = 2
  cfg.download = False
  cfg.shard_by = "documents"
  cfg.update(overrides)
  return cfg


def _get(cfg: Mapping[str, Any] | ml_collections.ConfigDict, key: str, default: Any = None) -> Any:
  value = cfg.get(key, default)
  return default if value is None else value


# ----------------------------------------------------------------------------------------------
# Token mapping
# ----------------------------------------------------------------------------------------------


def doc_to_ids(text: bytes | str, *, add_bos: bool = True, add_eos: bool = True) -> np.ndarray:
  """UTF-8 document -> int32 ids: [BOS] + (byte + 4) + [EOS]."""
  if isinstance(text, str):
    text = text.encode("utf-8")
  body = np.frombuffer(text, np.uint8).astype(np.int32) + OFFSET
  parts = [np.array([BOS_ID], np.int32)] if add_bos else []
  parts.append(body)
  if add_eos:
    parts.append(np.array([EOS_ID], np.int32))
  return np.concatenate(parts)




# ----------------------------------------------------------------------------------------------
# Packing
# ----------------------------------------------------------------------------------------------


class PackBytesIterDataset(grain.IterDataset):
  """Concatenates 1-D id arrays and cuts the stream into rows of exactly `seq_len` tokens.

  Rows come out in stream order (a document's tail starts the next row), so the state is just
  "parent state before the current document + offset into it": O(1) to save and to restore,
  unlike a replay. A finite parent ends with one zero-padded row.
  """

  def __init__(self, parent: grain.IterDataset, seq_len: int):
    super().__init__(parent)
    self._seq_len = seq_len

  def __iter__(self) -> _PackBytesIterator:
    return _PackBytesIterator(self._parent.__iter__(), self._seq_len)

  def __str__(self) -> str:
    return f"PackBytesIterDataset(seq_len={self._seq_len})"


class _PackBytesIterator(grain.DatasetIterator):
  """Iterator of `PackBytesIterDataset`; yields {"ids", "valid", "doc_ids"} rows."""

  def __init__(self, parent: grain.DatasetIterator, seq_len: int):
    super().__init__(parent)
    self._seq_len = seq_len
    self._doc: np.ndarray | None = None  # document being consumed
    self._offset = 0  # tokens of `_doc` already emitted
    self._doc_parent_state: dict[str, Any] | None = None  # parent state just before `_doc`

  def _next_doc(self) -> bool:
    state = self._parent.get_state()
    try:
      doc = next(self._parent)
    except StopIteration:
      return False
    self._doc, self._offset, self._doc_parent_state = np.asarray(doc, np.int32), 0, state
    return True

  def __next__(self) -> dict[str, np.ndarray]:
    s = self._seq_len
    ids = np.zeros((s,), np.int32)
    doc_ids = np.zeros((s,), np.int32)
    fill, piece = 0, 0
    while fill < s:
      if self._doc is None or self._offset >= len(self._doc):
        if not self._next_doc():
          break
        if len(self._doc) == 0:
          continue
      take = min(s - fill, len(self._doc) - self._offset)
      ids[fill : fill + take] = self._doc[self._offset : self._offset + take]
      piece += 1
      doc_ids[fill : fill + take] = piece
      fill += take
      self._offset += take
    if fill == 0:
      raise StopIteration
    return {"ids": ids, "valid": doc_ids > 0, "doc_ids": doc_ids}

  def get_state(self) -> dict[str, Any]:
    if self._doc is None or self._offset >= len(self._doc):
      return {"parent": self._parent.get_state(), "offset": 0}
    return {"parent": self._doc_parent_state, "offset": int(self._offset)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state["parent"])
    self._doc, self._offset, self._doc_parent_state = None, 0, None
    if state["offset"]:
      # Re-read the partly emitted document; the parent is deterministic given its state.
      if not self._next_doc():
        raise ValueError("PackBytesIterDataset.set_state: state points past the end of the data")
      self._offset = int(state["offset"])

  def __str__(self) -> str:
    return f"PackBytesIterDataset(seq_len={self._seq_len})"


def _stack_rows(rows: Sequence[Batch], *, batch_size: int) -> Batch:
  """Stacks rows into a batch; a short last batch (finite runs) is padded with empty rows."""
  out = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
  missing = batch_size - len(rows)
  if missing:
    pad = lambda v: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)])
    out = {k: pad(v) for k, v in out.items()}
  return out


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DocSource:
  """A domain's documents: a random-access grain dataset of UTF-8 `bytes`."""

  domain: str
  docs: grain.MapDataset


def _source(data_cfg) -> str:
  source = _get(data_cfg, "source", "default")
  if source not in SOURCES:
    raise ConfigError(f"data.source: must be one of {SOURCES}, got {source!r}")
  return source


def mix_builder(data_cfg):
  """The prepared `RealMixBytes` builder for source "default" or "fixture" (built on demand)."""
  # Lazy: tfds costs ~0.5 s to import.
  from bltjax.data import builders, corpus

  source = _source(data_cfg)
  name = _get(data_cfg, "name", "") or "real_mix_v1"
  configs = [c.name for c in builders.RealMixBytes.BUILDER_CONFIGS]
  if name not in configs:
    raise ConfigError(f"data.name: source {source!r} needs one of {configs}, got {name!r}")
  if source == "fixture":
    raw = corpus.fixture_raw_dir()
    # Keyed by content so an edited fixture never reads a stale build.
    default_dir = corpus.cache_dir() / f"fixture_tfds_{corpus.tree_fingerprint(raw)}"
    data_dir = pathlib.Path(_get(data_cfg, "data_dir", "") or default_dir)
  elif source == "default":
    raw = pathlib.Path(_get(data_cfg, "raw_dir", "") or corpus.default_raw_dir())
    data_dir = pathlib.Path(_get(data_cfg, "data_dir", "") or corpus.default_tfds_dir())
  else:
    raise ConfigError(f"data.source: {source!r} has no RealMixBytes builder")
  return builders.build(builders.RealMixBytes, raw, data_dir, config=name)


def _text_of(example: Any, text_field: str) -> bytes:
  value = example[text_field] if isinstance(example, Mapping) else example
  if isinstance(value, np.ndarray):
    value = value.item() if value.ndim == 0 else value.tobytes()
  return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _tfds_source(data_cfg, split: str) -> DocSource:
  import tensorflow_datasets as tfds  # Lazy: see mix_builder.

  name = _get(data_cfg, "name", "")
  if not name:
    raise ConfigError("data.name: source 'tfds' needs a catalog name, e.g. 'pg19'")
  field = _get(data_cfg, "text_field", "text")
  data_dir = _get(data_cfg, "data_dir", "") or None
  download = bool(_get(data_cfg, "download", False))
  try:
    src = tfds.data_source(name, split=split, data_dir=data_dir, download=download)
  except Exception as e:  # tfds raises many types; re-raise naming the config keys.
    raise ConfigError(
      f"data.name/data.split: cannot open tfds {name!r} split {split!r} "
      f"(data_dir={data_dir}; it must be prepared as array_record, see docs/data.md): {e}"
    ) from e
  docs = grain.MapDataset.source(src).map(functools.partial(_text_of, text_field=field))
  return DocSource(domain=name, docs=docs)


def _read_files(patterns: Sequence[str] | str, text_field: str, key: str) -> list[bytes]:
  if isinstance(patterns, str):
    patterns = [p for p in patterns.split(",") if p]
  matches = {p for pat in patterns for p in glob.glob(os.path.expanduser(pat), recursive=True)}
  paths = sorted(p for p in matches if os.path.isfile(p))
  if not paths:
    raise ConfigError(f"data.{key}: no file matches {list(patterns)!r}")
  docs: list[bytes] = []
  for path in paths:
    if path.endswith((".jsonl", ".jsonl.gz")):
      opener = gzip.open if path.endswith(".gz") else open
      with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
          if not line.strip():
            continue
          rec = json.loads(line)
          if text_field not in rec:
            raise ConfigError(f"data.text_field: {path}:{lineno} has no field {text_field!r}")
          docs.append(_text_of(rec, text_field))
    else:
      docs.append(pathlib.Path(path).read_bytes())
  return docs


def train_sources(data_cfg) -> list[DocSource]:
  """The training documents of `data_cfg`, one `DocSource` per domain, in a fixed order."""
  source = _source(data_cfg)
  split = _get(data_cfg, "split", "train")
  if source in ("default", "fixture"):
    builder = mix_builder(data_cfg)
    available = list(builder.info.splits.keys())
    if split in ("", "train"):
      names = [s for s in available if s.startswith("train_")]
    else:
      names = [s.strip() for s in split.split(",") if s.strip()]
    for n in names:
      if n not in available:
        raise ConfigError(f"data.split: {n!r} not in {builder.info.full_name}; have {available}")
      if not n.startswith("train_"):
        raise ConfigError(f"data.split: {n!r} is a held-out split and must never be trained on")
    data = builder.as_data_source()
    take_text = functools.partial(_text_of, text_field="text")
    return [
      DocSource(n.removeprefix("train_"), grain.MapDataset.source(data[n]).map(take_text))
      for n in names
    ]
  if source == "tfds":
    return [_tfds_source(data_cfg, split)]
  docs = _read_files(_get(data_cfg, "files", []), _get(data_cfg, "text_field", "text"), "files")
  return [DocSource("files", grain.MapDataset.source(docs))]


def _document_dataset(sources: Sequence[DocSource], data_cfg, seed: int) -> grain.MapDataset:
  """Shuffled (per epoch), repeated, optionally weighted stream of document bytes."""
  num_epochs = _get(data_cfg, "num_epochs")
  if num_epochs is not None and num_epochs < 1:
    raise ConfigError(f"data.num_epochs: must be >= 1 or None, got {num_epochs}")
  weights = _get(data_cfg, "weights")
  if not weights:
    # One global shuffle over all documents: each domain's byte share equals its size share.
    ds = sources[0].docs if len(sources) == 1 else grain.MapDataset.concatenate(
      [s.docs for s in sources]
    )
    return ds.shuffle(seed=seed).repeat(num_epochs)
  if num_epochs is not None:
    raise ConfigError("data.num_epochs: must be None when data.weights is set (mixes repeat)")
  weights = dict(weights)
  known = {s.domain for s in sources}
  unknown = set(weights) - known
  if unknown:
    raise ConfigError(f"data.weights: unknown domains {sorted(unknown)}; have {sorted(known)}")
  parts, doc_weights = [], []
  for i, s in enumerate(sources):
    w = float(weights.get(s.domain, 0.0))
    if w < 0:
      raise ConfigError(f"data.weights.{s.domain}: must be >= 0, got {w}")
    if w == 0:
      continue
    # grain mixes by element count; dividing by the mean document length makes it by bytes.
    # An even sample of <= 1024 documents estimates the mean without reading a huge source.
    sample = np.unique(np.linspace(0, len(s.docs) - 1, num=min(len(s.docs), 1024)).astype(int))
    mean_len = max(1.0, float(np.mean([len(s.docs[int(i)]) for i in sample])))
    parts.append(s.docs.shuffle(seed=(seed + 1 + i) % 2**32).repeat())
    doc_weights.append(w / mean_len)
  if not parts:
    raise ConfigError("data.weights: every weight is 0")
  return grain.MapDataset.mix(parts, doc_weights)


def _process_slice(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # Lazy: keep this module importable without initialising a backend.

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(
      f"make_train_iterator: need 0 <= process_index < process_count, "
      f"got {process_index}, {process_count}"
    )
  return process_index, process_count


def make_train_iterator(
  data_cfg: ml_collections.ConfigDict | Mapping[str, Any],
  *,
  seq_len: int,
  batch_size: int,
  seed: int,
  process_index: int | None = None,
  process_count: int | None = None,
) -> grain.DatasetIterator:
  """Builds this process's training iterator of packed byte batches.

  Args:
    data_cfg: the `data` config section (see the module docstring / `default_data_config`).
    seq_len: S, tokens per row (BOS/EOS included).
    batch_size: B, rows per batch for this process (the global batch is B * process_count).
    seed: shuffling seed; the same seed gives the same batches.
    process_index: this host's index; default `jax.process_index()`.
    process_count: number of hosts; default `jax.process_count()`.

  Returns:
    A grain iterator of {"ids": int32 [B, S], "valid": bool [B, S], "doc_ids": int32 [B, S]}
    with `get_state()` / `set_state()` for checkpointing.
  """
  if seq_len < 1:
    raise ValueError(f"make_train_iterator: seq_len must be >= 1, got {seq_len}")
  if batch_size < 1:
    raise ValueError(f"make_train_iterator: batch_size must be >= 1, got {batch_size}")
  if not 0 <= seed < 2**32:
    raise ValueError(f"make_train_iterator: seed must be in [0, 2**32), got {seed}")
  pi, pc = _process_slice(process_index, process_count)
  shard_by = _get(data_cfg, "shard_by", "documents")
  if shard_by not in ("documents", "rows"):
    raise ConfigError(f"data.shard_by: must be 'documents' or 'rows', got {shard_by!r}")
  docs = _document_dataset(train_sources(data_cfg), data_cfg, seed)
  rows = batch_size
  if shard_by == "documents":
    # Slice after the global shuffle: hosts see disjoint documents that together cover each epoch.
    docs = docs[pi::pc]
  else:
    rows = batch_size * pc  # the global batch; this process keeps its block of rows below
  threads = int(_get(data_cfg, "read_threads", 2))
  ds = docs.map(doc_to_ids).to_iter_dataset(
    grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2, 4 * threads))
  )
  ds = PackBytesIterDataset(ds, seq_len)
  ds = ds.batch(rows, batch_fn=functools.partial(_stack_rows, batch_size=rows))
  if rows != batch_size:
    first = pi * batch_size
    ds = ds.map(lambda b: {k: v[first:first + batch_size] for k, v in b.items()})
  return iter(ds)


# ----------------------------------------------------------------------------------------------
# Held-out documents for BPB evaluation
# ----------------------------------------------------------------------------------------------


def heldout_domains(data_cfg) -> list[str]:
  """Held-out BPB domains available for `data_cfg` (e.g. novel, drama, code, scripture_en)."""
  source = _source(data_cfg)
  if source in ("default", "fixture"):
    splits = mix_builder(data_cfg).info.splits.keys()
    return [s.removeprefix("heldout_") for s in splits if s.startswith("heldout_")]
  return ["eval"]


def make_eval_iterator(
  data_cfg: ml_collections.ConfigDict | Mapping[str, Any],
  *,
  domain: str | None = None,
  add_eos: bool = True,
  max_docs: int | None = None,
) -> Iterator[dict[str, Any]]:
  """Yields whole held-out documents, in stored order, for BPB evaluation.

  Args:
    data_cfg: the `data` config section.
    domain: one of `heldout_domains(data_cfg)`; None = every domain in turn. For the tfds and
      files sources the documents come from `data.eval_split` / `data.eval_files`.
    add_eos: end each document with EOS (so the model is also scored on stopping).
    max_docs: stop after this many documents per domain.

  Yields:
    {"ids": int32 [n] starting with BOS, "name": str, "domain": str, "num_bytes": int}; BPB
    divides the summed negative log2-likelihood of ids[1:] by num_bytes.
  """
  source = _source(data_cfg)
  domains = heldout_domains(data_cfg) if domain is None else [domain]
  if source in ("default", "fixture"):
    builder = mix_builder(data_cfg)
    data = builder.as_data_source()
    for d in domains:
      split = f"heldout_{d}"
      if split not in data:
        raise ValueError(
          f"make_eval_iterator: domain {d!r} not in {builder.info.full_name}; "
          f"have {heldout_domains(data_cfg)}"
        )
      src = data[split]
      n = len(src) if max_docs is None else min(max_docs, len(src))
      for i in range(n):
        ex = src[i]
        text = _text_of(ex, "text")
        yield {
          "ids": doc_to_ids(text, add_eos=add_eos),
          "name": _text_of(ex, "name").decode("utf-8"),
          "domain": d,
          "num_bytes": len(text),
        }
    return
  if domain not in (None, "eval"):
    raise ValueError(f"make_eval_iterator: source {source!r} only has domain 'eval': {domain!r}")
  if source == "tfds":
    docs = _tfds_source(data_cfg, _get(data_cfg, "eval_split", "validation")).docs
  else:
    text_field = _get(data_cfg, "text_field", "text")
    docs = _read_files(_get(data_cfg, "eval_files", []), text_field, "eval_files")
  n = len(docs) if max_docs is None else min(max_docs, len(docs))
  for i in range(n):
    text = docs[i]
    yield {
      "ids": doc_to_ids(text, add_eos=add_eos),
      "name": f"eval/{i}",
      "domain": "eval",
      "num_bytes": len(text),
    }


def to_global_batch(batch: Batch, sharding) -> dict[str, Any]:
  """Process-local numpy batch -> global jax.Arrays (batch dim sharded across processes)."""
  import jax

  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
