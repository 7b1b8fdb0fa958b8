"""`python -m bltjax.data prepare|stats`: build the tfds datasets from a raw dir (docs/data.md),
or print bytes, documents and order-0 entropy per split."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from bltjax.data import corpus
from bltjax.data.stats import unigram_entropy_bits


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m bltjax.data", description=__doc__)
  sub = parser.add_subparsers(dest="cmd", required=True)
  p = sub.add_parser("prepare", help="build the tfds datasets from a raw dir")
  p.add_argument("--raw_dir", default=str(corpus.default_raw_dir()))
  p.add_argument("--data_dir", default=str(corpus.default_tfds_dir()))
  p.add_argument("--with_sympy", action="store_true", default=None)
  s = sub.add_parser("stats", help="bytes, documents and order-0 entropy per split")
  s.add_argument("--raw_dir", default=str(corpus.default_raw_dir()))
  args = parser.parse_args(argv)
  if args.cmd == "prepare":
    from bltjax.data import builders  # tfds: only for `prepare`

    builders.prepare(args.raw_dir, args.data_dir, include_sympy=args.with_sympy)
  else:
    for split, docs in corpus.corpus_splits(args.raw_dir, include_sympy=True).items():
      texts = [d.read() for d in docs]
      n = sum(map(len, texts))
      h = unigram_entropy_bits(texts)
      print(f"{split:24s} {len(docs):6d} docs {n / 1e6:8.2f} MB  H0 {h:.3f} bits/byte")
  return 0


if __name__ == "__main__":
  sys.exit(main())
