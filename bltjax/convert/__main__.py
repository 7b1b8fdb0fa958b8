"""Command line: convert checkpoints between HF, Meta's official formats and bltjax.

  python -m bltjax.convert --from hf   SRC DST                 HF BltForCausalLM dir -> bltjax
  python -m bltjax.convert --from meta SRC DST [--entropy DIR] official BLT dir     -> bltjax
  python -m bltjax.convert --to hf     SRC DST                 bltjax checkpoint    -> HF dir

With --from, SRC (and --entropy) may be a Hugging Face hub id such as facebook/blt-1b when no
such local path exists: it is fetched with `huggingface_hub.snapshot_download` (the hub cache,
HF_HUB_CACHE, is used first; HF_HUB_OFFLINE=1 reads only the cache). A hub snapshot in Meta's
hub-mixin layout (`config.json` = {"args": ...}, as facebook/blt-1b) is converted as --from meta
whichever --from was given, with its entropy model from SRC/entropy_model when present.

DST is written next to itself under a temporary name and renamed into place only when complete;
an existing DST is refused unless --overwrite is given. Exit status 2 when SRC is missing, cannot
be fetched or is not a checkpoint of the given format; 1 on a conversion error, whose message
names the file and tensor or config key.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from pathlib import Path

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


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class UsageError(Exception):
  """SRC missing, unfetchable or of the wrong kind: one line, exit status 2."""


def resolve_source(src: str, what: str = "SRC") -> str:
  """A local directory as given, else the local snapshot of hub id `src` (downloaded if needed)."""
  p = Path(src)
  if p.exists():
    if not p.is_dir():
      raise UsageError(f"{what} {src}: not a directory")
    return src
  if not _HUB_ID.match(src):
    raise UsageError(f"{what} {src}: no such directory (and not a hub id owner/name)")
  try:
    from huggingface_hub import snapshot_download
  except ImportError as e:
    raise UsageError(f"{what} {src}: not a local directory, and huggingface_hub is not "
                     "installed to fetch it from the hub") from e
  try:
    # Weights and configs only (the repos also hold READMEs, images, sometimes .pth copies).
    return snapshot_download(src, allow_patterns=["*.json", "*.safetensors", "*.pth"])
  except Exception as e:  # offline, unknown repo, gated, HTTP: all end the same way
    kind = type(e).__name__
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise UsageError(f"{what} {src}: cannot fetch this hub id ({kind}: {first}); it is neither a "
                     "local directory nor in the hub cache (HF_HUB_CACHE)") from e


def _layout(src: str) -> str:
  """'hf' (BltForCausalLM config.json), 'meta' (params.json or hub-mixin {"args"}) or ''."""
  p = Path(src)
  if (p / "params.json").is_file():
    return "meta"
  try:
    doc = json.loads((p / "config.json").read_text())
  except (OSError, ValueError):
    return ""
  if isinstance(doc, dict) and "args" in doc:
    return "meta"
  return "hf" if isinstance(doc, dict) and "model_type" in doc else ""


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
                  help="the stored weights' dtype; default keeps the source's (bf16 stays "
                  "bf16). Compute and cache precision are chosen on load (decode.py, score, eval "
                  "--dtype / --exact; docs/decoding.md)")
  ap.add_argument("--overwrite", action="store_true", help="replace an existing DST")
  ap.add_argument("-v", "--verbose", action="store_true", default=None,
                  help="per-tensor progress (default: on for checkpoints above 256 MiB)")
  ap.add_argument("-q", "--quiet", action="store_true", help="no progress, warnings only")
  a = ap.parse_args(argv)
  logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
  if a.entropy is not None and a.src_format != "meta":
    ap.error("--entropy only applies to --from meta")
  try:
    src_format = _check_source(a)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  verbose = a.verbose if a.verbose is not None else (not a.quiet and _size(a.src) > _BIG)
  progress = _progress(bool(verbose) and not a.quiet)
  t0 = time.time()
  try:
    if src_format == "hf":
      out = hf.import_hf(a.src, a.dst, dtype=a.dtype, overwrite=a.overwrite, progress=progress)
    elif src_format == "meta":
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


def _check_source(a) -> str:
  """Resolves hub ids in place (a.src, a.entropy); returns the importer to use ('hf', 'meta' or
  'to_hf'). Raises UsageError for a missing SRC or one that is not of the expected kind."""
  if a.dst_format:
    from bltjax import weights

    if not Path(a.src).is_dir():
      raise UsageError(f"SRC {a.src}: no such directory (expected a bltjax checkpoint)")
    try:
      weights.load_config(a.src)
    except (CheckpointError, OSError) as e:
      raise UsageError(str(e)) from e
    return "to_hf"
  hub = not Path(a.src).exists()
  a.src = resolve_source(a.src)
  if a.entropy is not None:
    a.entropy = resolve_source(a.entropy, "--entropy")
  layout = _layout(a.src)
  if not layout:
    raise UsageError(f"SRC {a.src}: neither an HF BLT directory (config.json with model_type) nor "
                     "an official Meta one (params.json, or config.json with 'args')")
  if layout != a.src_format:
    if not hub:
      raise UsageError(f"SRC {a.src}: this is {'an HF' if layout == 'hf' else 'a Meta'} "
                       f"checkpoint: use --from {layout}")
    print(f"note: the hub snapshot is in the {layout} layout; converting it as --from {layout}",
          file=sys.stderr)
  return layout


if __name__ == "__main__":
  sys.exit(main())
