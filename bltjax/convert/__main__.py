"""Command line: convert checkpoints between HF, Meta's official formats and bltjax.

  python -m bltjax.convert --from hf   SRC DST                 HF BltForCausalLM dir -> bltjax
  python -m bltjax.convert --from meta SRC DST [--entropy DIR] official BLT dir     -> bltjax
  python -m bltjax.convert --to hf     SRC DST                 bltjax checkpoint    -> HF dir

DST is written next to itself under a temporary name and renamed into place only when complete;
an existing DST is refused unless --overwrite is given. Exit status 1 on a conversion error, whose
message names the file and tensor or config key.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from bltjax.convert import hf, meta
from bltjax.weights import CheckpointError

_BIG = 1 << 28  # print per-tensor progress for checkpoints above 256 MiB


def _progress(verbose: bool):
  start = time.time()

  def report(i: int, n: int, name: str, shape: tuple[int, ...]) -> None:
    if verbose:
      print(f"[{i}/{n}] {time.time() - start:7.1f}s {name} {list(shape)}", file=sys.stderr,
            flush=True)

  return report


def _size(path: str) -> int:
  import os

  total = 0
  for root, _, files in os.walk(path):
    for f in files:
      total += os.path.getsize(os.path.join(root, f))
  return total


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m bltjax.convert", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  g = ap.add_mutually_exclusive_group(required=True)
  g.add_argument("--from", dest="src_format", choices=("hf", "meta"),
                 help="convert a checkpoint in this format into a bltjax checkpoint")
  g.add_argument("--to", dest="dst_format", choices=("hf",),
                 help="convert a bltjax checkpoint into this format")
  ap.add_argument("src")
  ap.add_argument("dst")
  ap.add_argument("--entropy", default=None,
                  help="(--from meta) entropy-model directory; default SRC/entropy_model or "
                  "SRC/../entropy_model")
  ap.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                  help="cast the weights; default keeps the stored dtype (bf16 stays bf16)")
  ap.add_argument("--overwrite", action="store_true", help="replace an existing DST")
  ap.add_argument("-v", "--verbose", action="store_true", default=None,
                  help="per-tensor progress (default: on for checkpoints above 256 MiB)")
  ap.add_argument("-q", "--quiet", action="store_true", help="no progress, warnings only")
  a = ap.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  if a.entropy is not None and a.src_format != "meta":
    ap.error("--entropy only applies to --from meta")
  verbose = a.verbose if a.verbose is not None else (not a.quiet and _size(a.src) > _BIG)
  progress = _progress(bool(verbose) and not a.quiet)
  t0 = time.time()
  try:
    if a.src_format == "hf":
      out = hf.import_hf(a.src, a.dst, dtype=a.dtype, overwrite=a.overwrite, progress=progress)
    elif a.src_format == "meta":
      out = meta.import_meta(a.src, a.dst, entropy=a.entropy, dtype=a.dtype,
                             overwrite=a.overwrite, progress=progress)
    else:
      out = hf.export_hf(a.src, a.dst, dtype=a.dtype, overwrite=a.overwrite, progress=progress)
  except (hf.ConversionError, CheckpointError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if not a.quiet:
    print(f"wrote {out} in {time.time() - t0:.1f}s", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
