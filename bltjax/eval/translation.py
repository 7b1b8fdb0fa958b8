"""Translation: k-shot prompts, greedy, cut at the first newline; sacrebleu BLEU, chrF, chrF++.

The setup imitates Fast BLT's FLORES-101 runs (arXiv 2605.08044: 4-shot, greedy) on data
that is available offline. Prompts are `k` exemplar pairs, then the source line:

  English: <exemplar source>
  Spanish: <exemplar target>
  (blank line; k times)
  English: <source>
  Spanish:

and the completion up to its first newline, stripped, is the hypothesis. Both directions of
every pair are decoded and scored separately (corpus BLEU with 13a tokenisation, chrF, chrF++).

Data (one of):
  default   the KJV <-> Reina-Valera 1909 verse pairs of `make data` (tfds `kjv_rv1909`, split
            --split, exemplars = the first k pairs of its train split); `--data fixture` builds
            the same dataset from the committed test corpus. Archaic, religious text: these
            scores are not FLORES scores and must not be labelled so.
  --pairs F a local TSV (header row: the two language codes, e.g. `en<TAB>es`, or `src<TAB>tgt`)
            or JSONL ({"src": ..., "tgt": ...}); its first k pairs are the exemplars.
  --tfds N  a prepared tfds translation dataset (e.g. wmt14_translate/fr-en), read without
            TensorFlow via `as_data_source` (prepare it as array_record first); exemplars = the
            first k pairs of --shots-split.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from bltjax.eval.runner import UsageError

NAME = "translation"
KIND = "generate"
MAX_NEW = 512
LANG_NAMES = {"en": "English", "es": "Spanish", "fr": "French", "de": "German", "it": "Italian",
              "pt": "Portuguese", "cs": "Czech", "ru": "Russian", "zh": "Chinese",
              "ja": "Japanese", "hi": "Hindi", "tr": "Turkish", "fi": "Finnish", "ro": "Romanian"}
PAIRS_FILE = Path(__file__).parent / "data" / "verse_pairs_en_es.tsv"


@dataclasses.dataclass(frozen=True)
class Corpus:
  langs: tuple[str, str]  # codes of the two columns
  exemplars: list[tuple[str, str]]
  pairs: list[tuple[str, str]]
  source: str


def add_args(ap) -> None:
  g = ap.add_argument_group("translation")
  g.add_argument("--shots", type=int, default=4, help="exemplar pairs per prompt (paper: 4)")
  g.add_argument("--pairs", default=None, help="local TSV/JSONL of pairs (see the docstring)")
  g.add_argument("--langs", default=None,
                 help="language codes of the two columns, e.g. en,es (default: the TSV header, "
                 "else en,es)")
  g.add_argument("--tfds", default=None,
                 help="tfds translation dataset, e.g. wmt14_translate/fr-en")
  g.add_argument("--tfds-data-dir", default=None, help="tfds data_dir of --tfds")
  g.add_argument("--split", default="test", help="split to evaluate (default data and --tfds)")
  g.add_argument("--shots-split", default="train", help="split the exemplars come from")
  g.add_argument("--directions", default="both", choices=("both", "forward", "backward"),
                 help="forward = first column -> second")


def _split_langs(text: str, where: str) -> tuple[str, str]:
  parts = [x.strip() for x in text.split(",")]
  if len(parts) != 2 or not all(parts):
    raise UsageError(f"{where}: expected two language codes like en,es, got {text!r}")
  return parts[0], parts[1]


def read_pairs_file(path: str, shots: int, langs: str | None) -> Corpus:
  """TSV with a header row of two codes (or src/tgt), or JSONL with src/tgt fields."""
  p = Path(path)
  try:
    text = p.read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f"--pairs {path}: cannot read ({e})") from e
  rows: list[tuple[str, str]] = []
  header = ("en", "es")
  if p.suffix in (".jsonl", ".json"):
    for n, line in enumerate(text.splitlines(), 1):
      if line.strip():
        try:
          rec = json.loads(line)
          rows.append((str(rec["src"]), str(rec["tgt"])))
        except (ValueError, KeyError, TypeError) as e:
          raise UsageError(f"--pairs {path}:{n}: expected {{\"src\": ..., \"tgt\": ...}}") from e
  else:
    lines = list(csv.reader(text.splitlines(), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not lines or len(lines[0]) != 2:
      raise UsageError(f"--pairs {path}: expected a header row with two tab-separated columns")
    if [c.lower() for c in lines[0]] != ["src", "tgt"]:
      header = (lines[0][0].strip(), lines[0][1].strip())
    for n, cols in enumerate(lines[1:], 2):
      if len(cols) != 2:
        raise UsageError(f"--pairs {path}:{n}: expected 2 tab-separated columns, got {len(cols)}")
      rows.append((cols[0].strip(), cols[1].strip()))
  codes = _split_langs(langs, "--langs") if langs else header
  if len(rows) <= shots:
    raise UsageError(f"--pairs {path}: {len(rows)} pairs, need more than --shots {shots}")
  return Corpus(codes, rows[:shots], rows[shots:], f"pairs:{p.name}")


def _tfds_pairs(builder, split: str, langs: tuple[str, str], limit: int | None, where: str):
  try:
    src = builder.as_data_source()[split]
  except Exception as e:  # tfds raises KeyError/ValueError/... for a missing split
    raise UsageError(f"{where}: no split {split!r} ({type(e).__name__})") from e
  n = len(src) if limit is None else min(limit, len(src))
  out = []
  for i in range(n):
    ex = src[i]
    t = ex.get("translation", ex)
    dec = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)
    out.append((dec(t[langs[0]]).strip(), dec(t[langs[1]]).strip()))
  return out


def _tfds_corpus(a) -> Corpus:
  import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy import

  where = f"--tfds {a.tfds}"
  try:
    if os.path.isdir(a.tfds):
      builder = tfds.builder_from_directory(a.tfds)
    else:
      builder = tfds.builder(a.tfds, data_dir=a.tfds_data_dir)
    prepared = builder.is_prepared()
  except Exception as e:  # DatasetNotFoundError and friends
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UsageError(f"{where}: cannot open it ({first}); prepare it locally as array_record "
                     "(see docs/cli.md, Evaluation)") from e
  if not prepared:
    raise UsageError(f"{where}: not prepared under {builder.data_dir}; prepare it locally as "
                     "array_record first (see docs/cli.md, Evaluation)")
  if a.langs:
    langs = _split_langs(a.langs, "--langs")
  elif builder.info.supervised_keys:
    langs = tuple(builder.info.supervised_keys[:2])
  else:
    langs = tuple(builder.info.features["translation"].languages[:2])
  return Corpus(langs, _tfds_pairs(builder, a.shots_split, langs, a.shots, where),
                _tfds_pairs(builder, a.split, langs, None, where), f"tfds:{a.tfds}:{a.split}")


def _verse_corpus(a) -> Corpus:
  from bltjax.data import builders, corpus  # noqa: PLC0415

  if a.data == "fixture":
    raw = corpus.fixture_raw_dir()
    data_dir = corpus.cache_dir() / f"fixture_tfds_{corpus.tree_fingerprint(raw)}"
  else:
    raw, data_dir = corpus.default_raw_dir(), corpus.default_tfds_dir()
  try:
    b = builders.build(builders.KjvRv1909, raw, data_dir)
  except FileNotFoundError as e:
    raise UsageError(f"--data {a.data}: no KJV-RV1909 pairs ({e}); run `make data`, or use "
                     "--data fixture or --pairs FILE") from e
  where = f"kjv_rv1909 ({a.data})"
  langs = ("en", "es")
  return Corpus(langs, _tfds_pairs(b, a.shots_split, langs, a.shots, where),
                _tfds_pairs(b, a.split, langs, None, where), f"kjv_rv1909:{a.data}:{a.split}")


def load_corpus(a) -> Corpus:
  if a.pairs and a.tfds:
    raise UsageError("--pairs and --tfds: give one of them")
  if a.shots < 0:
    raise UsageError(f"--shots: must be >= 0, got {a.shots}")
  if a.pairs:
    return read_pairs_file(a.pairs, a.shots, a.langs)
  if a.tfds:
    return _tfds_corpus(a)
  c = _verse_corpus(a)
  if len(c.exemplars) < a.shots:
    raise UsageError(f"--shots {a.shots}: split {a.shots_split!r} has {len(c.exemplars)} pairs")
  return c


def lang_name(code: str) -> str:
  return LANG_NAMES.get(code.split("-")[0].lower(), code)


def make_prompt(shots: list[tuple[str, str]], source: str, src: str, tgt: str) -> str:
  s, t = lang_name(src), lang_name(tgt)
  return "".join(f"{s}: {a}\n{t}: {b}\n\n" for a, b in shots) + f"{s}: {source}\n{t}:"


def examples(a) -> list[dict[str, Any]]:
  c = load_corpus(a)
  pairs = c.pairs if a.limit is None else c.pairs[:a.limit]
  (la, lb), out = c.langs, []
  dirs = {"both": (0, 1), "forward": (0,), "backward": (1,)}[a.directions]
  for d in dirs:
    src, tgt = (la, lb) if d == 0 else (lb, la)
    shots = [(x, y) if d == 0 else (y, x) for x, y in c.exemplars]
    for i, (x, y) in enumerate(pairs):
      source, ref = (x, y) if d == 0 else (y, x)
      out.append({"id": f"{src}-{tgt}/{i}", "group": f"{src}-{tgt}", "source": source,
                  "reference": ref, "prompt": make_prompt(shots, source, src, tgt)})
  a.corpus_source = c.source
  return out


def process(ctx, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
  gens = ctx.generate(batch, [ex["prompt"].encode("utf-8") for ex in batch], stops=(b"\n",))
  out = []
  for ex, g in zip(batch, gens, strict=True):
    rec = {k: ex[k] for k in ("id", "group", "source", "reference")}
    rec["hypothesis"] = g["completion"].split("\n")[0].strip()
    out.append({**rec, **g})
  return out


def metrics(hyps: list[str], refs: list[str]) -> dict[str, float]:
  """Corpus BLEU (13a), chrF and chrF++ (sacrebleu 2.6)."""
  import sacrebleu  # noqa: PLC0415

  return {"bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
          "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
          "chrf++": sacrebleu.corpus_chrf(hyps, [refs], word_order=2).score}


def score(records: list[dict[str, Any]], a) -> dict[str, Any]:
  out = {}
  for g in sorted({r["group"] for r in records}):
    rs = sorted((r for r in records if r["group"] == g), key=lambda r: int(r["id"].split("/")[1]))
    out[g] = {**metrics([r["hypothesis"] for r in rs], [r["reference"] for r in rs]),
              "n": len(rs)}
  return out


def settings(a) -> dict[str, Any]:
  return {"shots": a.shots, "pairs": a.pairs and os.path.abspath(a.pairs), "tfds": a.tfds,
          "split": a.split, "shots_split": a.shots_split, "data": a.data,
          "directions": a.directions, "langs": a.langs}
