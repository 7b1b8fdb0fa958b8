"""python -m bltjax.eval --checkpoint DIR --suite SUITE --method M --output RUN_DIR [options]

Writes RUN_DIR/examples.jsonl (one line per example, appended as each batch finishes) and
RUN_DIR/results.json (suite, method, settings, scores, mean decoder and encoder+global NFEs
per example, Eq. 8 GB per example, wall seconds, bytes/s, n). `--resume` continues a run,
skipping the examples already written. `python -m bltjax.report RUN_DIR...` tabulates runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bltjax import paths
from bltjax.decoding import options
from bltjax.eval import SUITES, suite_module
from bltjax.eval.runner import UsageError


class _Parser(argparse.ArgumentParser):
  def error(self, message):  # one line, exit status 2 (argparse prints usage too)
    self.exit(2, f"{self.prog}: error: {message}\n")


def parser() -> argparse.ArgumentParser:
  ap = _Parser(prog="python -m bltjax.eval", description=__doc__.splitlines()[0])
  ap.add_argument("--suite", required=True, choices=SUITES)
  ap.add_argument("--checkpoint", default=None, help="bltjax checkpoint directory (optional "
                  "only for humaneval --completions)")
  ap.add_argument("--output", required=True, help="run directory")
  ap.add_argument("--name", default=None, help="model name in reports (default: checkpoint "
                  "directory name)")
  ap.add_argument("--limit", type=int, default=None,
                  help="first N examples (bpb: documents per domain; translation: pairs)")
  ap.add_argument("--resume", action="store_true", help="continue RUN_DIR, skipping finished "
                  "examples")
  ap.add_argument("--overwrite", action="store_true", help="start RUN_DIR again")
  ap.add_argument("--data", default=None, choices=("default", "fixture"),
                  help="bpb/translation: the `make data` corpus or the committed fixture "
                  "(default: the corpus once `make data` has run)")
  ap.add_argument("--window", type=int, default=2048, help="likelihood: bytes per forward pass")
  ap.add_argument("--quiet", action="store_true", help="no progress bar")
  d = ap.add_argument_group("decoding (as decode.py)")
  options.add_args(d, greedy_note=" (the protocols)")
  d.add_argument("--batch-size", type=int, default=8)
  d.add_argument("--max-new-bytes", type=int, default=None, help="default: the suite's (512)")
  d.add_argument("--no-warmup", dest="warmup", action="store_false",
                 help="time the first batch with its compilation")
  for s in SUITES:
    suite_module(s).add_args(ap)
  return ap


def settings(a, suite, cfg) -> dict:
  s = {"suite": a.suite, "method": a.method, "checkpoint": a.checkpoint and
       str(paths.as_path(a.checkpoint)), "limit": a.limit, "batch_size": a.batch_size,
       "dtype": a.dtype, **suite.settings(a)}
  if a.exact:  # only when set: runs started before the flag existed still resume
    s["exact"] = True
  if a.draft_tau:  # likewise
    s["draft_tau"] = a.draft_tau
  if suite.KIND == "generate":
    s.update(draft_k=a.draft_k, rule=a.rule, alpha=a.alpha, gamma=a.gamma, eb_rule=a.eb_rule,
             block_latent=a.block_latent, temperature=a.temperature, top_k=a.top_k,
             top_p=a.top_p, seed=a.seed, max_new_bytes=a.max_new_bytes)
  if cfg is not None and cfg.diffusion.enabled:  # BLT-D: Z names the model in reports
    s["block_size"] = cfg.diffusion.block_size
  return s


def _checks(a, suite) -> None:
  for key in ("batch_size", "window", "limit", "max_new_bytes"):
    v = getattr(a, key)
    if v is not None and v < 1:
      raise UsageError(f"--{key.replace('_', '-')}: must be positive, got {v}")
  if a.checkpoint is None and not (a.suite == "humaneval" and a.completions):
    raise UsageError(f"--checkpoint: required for --suite {a.suite}")
  if a.resume and a.overwrite:
    raise UsageError("--resume and --overwrite: give one of them")
  if msg := options.check_args(a):
    raise UsageError(msg)


def main(argv: list[str] | None = None) -> int:
  a = parser().parse_args(argv)
  try:
    return _main(a)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


def _main(a) -> int:
  suite = suite_module(a.suite)
  _checks(a, suite)
  if a.max_new_bytes is None:
    a.max_new_bytes = suite.MAX_NEW
  if a.data is None:
    from bltjax.data import corpus  # noqa: PLC0415

    a.data = corpus.default_source()
  from bltjax.eval import runner  # noqa: PLC0415

  ctx = runner.Context(args=a, method=a.method)
  extra = {"model": a.name or (Path(a.checkpoint).name if a.checkpoint else
                               f"completions:{Path(a.completions).name}")}
  if a.checkpoint is not None:
    from bltjax import precision, weights  # noqa: PLC0415
    from bltjax.decoding import generation, nfe  # noqa: PLC0415

    try:
      cfg = weights.load_config(a.checkpoint)
      opt = options.from_args(a)
      generation.check(a.method, cfg, opt)  # before any work or output
    except (ValueError, OSError) as e:
      raise UsageError(f"--checkpoint {a.checkpoint}: --method {a.method}: {e}") from e
    try:
      cfg, params = weights.load_checkpoint(a.checkpoint, dtype=a.dtype)
    except (ValueError, OSError) as e:
      raise UsageError(f"--checkpoint {a.checkpoint}: {e}") from e
    cfg, params = precision.apply(cfg, params, a.dtype, exact=a.exact)
    counts = nfe.param_counts(params)
    ctx.cfg, ctx.params, ctx.opt, ctx.counts = cfg, params, opt, counts
    extra["param_counts"] = {"enc": counts.enc, "glob": counts.glob, "dec": counts.dec}
  res = runner.run(suite, a, ctx, settings(a, suite, ctx.cfg), extra)
  print(os.path.join(a.output, runner.RESULTS), file=sys.stderr)
  print(_summary(res))
  return 0


def _summary(res: dict) -> str:
  import json  # noqa: PLC0415

  keep = {k: res.get(k) for k in ("suite", "method", "model", "n", "scores", "nfe",
                                  "est_bandwidth_gb", "bytes_per_second") if k in res}
  return json.dumps(keep)


if __name__ == "__main__":
  sys.exit(main())
