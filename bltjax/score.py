"""Bits-per-byte of a file under a bltjax checkpoint (its own patcher decides the patches).

  python -m bltjax.score --checkpoint DIR --file F [--window N] [--stride N] [--batch B]

prints one JSON line `{"bytes": n, "nll_nats": x, "bpb": y, "patches": p}`:

* `nll_nats`: summed negative log-likelihood (nats) of every byte of F, read as raw bytes (any
  encoding), each given BOS and the bytes before it. There is no EOS target.
* `bpb = nll_nats / (ln 2 * bytes)`.
* `patches`: the number of patches the checkpoint's patcher opened at the file's bytes (the BOS
  patch and the next-token slot are not counted), so `bytes / patches` is the mean patch size.

Windows: a file of at most `window` bytes is scored in one forward pass (`[BOS] + bytes`).
A longer file is scored in windows of exactly `window` bytes, each with its own BOS: the first
window scores its `window` bytes; every later window moves forward by `stride` bytes, re-reads
the `window - stride` bytes before them as context only and scores the `stride` new ones (the
last window ends at the end of the file and scores what is left). Every byte is scored exactly
once. Context does not reach further back than one window, so windowed scores are an upper
bound on the whole-file score; larger windows give tighter numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bltjax.config import BOS_ID, OFFSET, BLTConfig


def windows(n: int, window: int, stride: int) -> Iterator[tuple[int, int, int]]:
  """(start, score_from, end) byte ranges: bytes [start, end) are read, [score_from, end) scored.

  Every byte in [0, n) is scored exactly once; every window but a lone short one has exactly
  `window` bytes, so all forward passes share one shape.
  """
  if window < 1 or not 1 <= stride <= window:
    raise ValueError(f"need window >= 1 and 1 <= stride <= window, got {window}, {stride}")
  done = min(n, window)
  yield 0, 0, done
  while done < n:
    end = min(done + stride, n)
    yield end - window, done, end
    done = end


def next_byte_nll(params: Any, cfg: BLTConfig, ids_BxS: jnp.ndarray,
                  lengths_B: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """NLL (nats) of ids[:, j + 1] given ids[:, :j + 1] under the checkpoint's own patcher, [B,
  S-1], and its patch starts; positions past a row's length are junk. Shared by the scorers."""
  from bltjax.modeling import model  # noqa: PLC0415 - model imports flax; keep --help fast

  start_BxS1 = model.patch(params, cfg, ids_BxS, lengths_B)
  logits_BxSxV = model.forward(params, cfg, ids_BxS, start_BxS1, lengths_B)
  logp = jax.nn.log_softmax(logits_BxSxV[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, ids_BxS[:, 1:, None], axis=-1)[..., 0], start_BxS1


def score_bytes(params: Any, cfg: BLTConfig, data: bytes, *, window: int = 4096,
                stride: int | None = None, batch: int = 1) -> dict[str, Any]:
  """Scores `data` (see the module docstring for the window rule).

  Args:
    params: bltjax parameters (with the entropy model when the patcher needs it).
    cfg: their config.
    data: the raw bytes.
    window: bytes per forward pass (plus BOS).
    stride: new bytes scored per later window; default `window // 2`.
    batch: windows per forward pass.

  Returns:
    {"bytes", "nll_nats", "bpb", "patches"}.
  """
  stride = stride or max(1, window // 2)
  n = len(data)
  if n == 0:
    return {"bytes": 0, "nll_nats": 0.0, "bpb": None, "patches": 0}
  ids = np.concatenate([[BOS_ID], np.frombuffer(data, np.uint8).astype(np.int32) + OFFSET])
  fn = jax.jit(lambda p, x: next_byte_nll(p, cfg, x))
  spans = list(windows(n, window, stride))
  nll, patches = 0.0, 0
  for i in range(0, len(spans), batch):
    group = spans[i:i + batch]
    # ids[1 + b] is byte b; row = [BOS] + bytes[start:end].
    rows = [np.concatenate([[BOS_ID], ids[1 + s:1 + e]]) for s, _, e in group]
    rows += [rows[-1]] * (batch - len(rows)) if len(spans) > batch else []  # keep one shape
    nll_BxS, start_BxS1 = jax.device_get(fn(params, jnp.asarray(np.stack(rows))))
    for r, (s, f, e) in enumerate(group):
      # Position j predicts byte s + j; byte s + j sits at position j + 1.
      nll += float(np.sum(nll_BxS[r, f - s:e - s], dtype=np.float64))
      patches += int(np.sum(start_BxS1[r, f - s + 1:e - s + 1]))
  return {"bytes": n, "nll_nats": nll, "bpb": nll / (math.log(2) * n), "patches": patches}


def _fail(msg: str) -> int:
  print(f"error: {msg}", file=sys.stderr)
  return 2


def main(argv: list[str] | None = None) -> int:
  ap = argparse.ArgumentParser(prog="python -m bltjax.score", description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--checkpoint", required=True, help="bltjax checkpoint directory")
  ap.add_argument("--file", required=True, help="file to score (raw bytes)")
  ap.add_argument("--window", type=int, default=4096, help="bytes per forward pass")
  ap.add_argument("--stride", type=int, default=None,
                  help="new bytes per later window (default window // 2)")
  ap.add_argument("--batch", type=int, default=1, help="windows per forward pass")
  ap.add_argument("--dtype", default=None, choices=("float32", "bfloat16"),
                  help="weights and compute dtype (default: the checkpoint's); the log-softmax "
                  "stays fp32")
  a = ap.parse_args(argv)
  if a.window < 1 or (a.stride is not None and not 1 <= a.stride <= a.window):
    ap.error("need --window >= 1 and 1 <= --stride <= --window")
  from bltjax import paths, precision, weights

  try:  # the file first: it is cheaper to check than the checkpoint (a path or a gs:// URL)
    data = paths.as_path(a.file, "--file").read_bytes()
  except (OSError, ValueError) as e:
    return _fail(f"--file {a.file}: {e.strerror or e}")
  try:
    cfg, params = weights.load_checkpoint(a.checkpoint, dtype=a.dtype)
  except (weights.CheckpointError, OSError) as e:
    return _fail(f"--checkpoint: {e}")
  cfg, params = precision.apply(cfg, params, a.dtype)
  out = score_bytes(params, cfg, data, window=a.window, stride=a.stride, batch=max(1, a.batch))
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
