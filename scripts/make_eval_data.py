"""Writes the small committed evaluation sets under bltjax/eval/data/ from the fixture corpus.

  python scripts/make_eval_data.py

* verse_pairs_en_es.tsv: KJV <-> Reina-Valera 1909 verse pairs (header `en<TAB>es`): the first
  4 pairs of the train split (the exemplars), then 28 pairs of the test split (Gospels + Acts).
* mc_verse_endings.jsonl: 40 items "which of four endings follows this verse's first half"
  (English KJV, test split); the distractors are the endings of other verses.
Both are public-domain text, deterministic from seed 0.
"""

import json
import pathlib
import random
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bltjax.data import corpus  # noqa: E402

OUT = ROOT / "bltjax" / "eval" / "data"


def split_verse(text: str) -> tuple[str, str] | None:
  """Cuts at the clause break (", ; :") nearest the middle, else the middle space."""
  mid = len(text) // 2
  cuts = [i + 1 for i, c in enumerate(text) if c in ",;:" and text[i + 1:i + 2] == " "]
  cuts = [i for i in cuts if 0.3 * len(text) <= i <= 0.7 * len(text)]
  if not cuts:
    cuts = [i for i, c in enumerate(text) if c == " " and 0.4 * len(text) <= i <= 0.6 * len(text)]
  if not cuts:
    return None
  i = min(cuts, key=lambda j: abs(j - mid))
  return text[:i].rstrip(), " " + text[i:].strip()


def main() -> None:
  splits = corpus.translation_splits(corpus.load_bible_pairs(corpus.fixture_raw_dir()))
  rng = random.Random(0)
  test = splits["test"]
  rows = [(p.en, p.es) for p in splits["train"][:4]] + [(p.en, p.es) for p in test[:28]]
  OUT.mkdir(parents=True, exist_ok=True)
  with open(OUT / "verse_pairs_en_es.tsv", "w", encoding="utf-8") as f:
    f.write("en\tes\n")
    for en, es in rows:
      assert "\t" not in en + es and "\n" not in en + es
      f.write(f"{en}\t{es}\n")
  halves = [h for h in (split_verse(p.en) for p in test) if h is not None][:40]
  with open(OUT / "mc_verse_endings.jsonl", "w", encoding="utf-8") as f:
    for i, (ctx, end) in enumerate(halves):
      others = [e for j, (_, e) in enumerate(halves) if j != i]
      choices = rng.sample(others, 3) + [end]
      rng.shuffle(choices)
      f.write(json.dumps({"context": ctx, "choices": choices, "gold": choices.index(end)},
                         ensure_ascii=False) + "\n")


if __name__ == "__main__":
  main()
