"""Per-byte negative log-likelihoods under a checkpoint's causal path, batched for evaluation.

`score.score_bytes` scores one file; the suites score thousands of short rows (choices given a
context, canonical solutions given a prompt, held-out documents), so this scorer packs rows
into power-of-two buckets of a fixed batch and keeps one compiled program per bucket. Long
sequences are read in windows by `score.windows`'s rule (every byte scored exactly once, each
window with its own BOS). BLT-D checkpoints are scored as ordinary causal BLTs (arXiv
2605.08044 runs its likelihood tasks in causal mode).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bltjax import score
from bltjax.config import BOS_ID, OFFSET, BLTConfig


@functools.partial(jax.jit, static_argnames=("cfg",))  # one cache across Scorers and runs
def _nll(params: Any, ids_BxS: jnp.ndarray, lengths_B: jnp.ndarray, *, cfg: BLTConfig):
  """NLL (nats) of ids[:, j + 1] given ids[:, :j + 1]; positions past a row's length are junk."""
  return score.next_byte_nll(params, cfg, ids_BxS, lengths_B)[0]


def byte_ids(data: bytes) -> np.ndarray:
  return np.frombuffer(data, np.uint8).astype(np.int32) + OFFSET


def _bucket(n: int, lo: int = 16) -> int:
  return max(lo, 1 << (n - 1).bit_length())


class Scorer:
  """Scores id sequences (bytes + 4, optionally ending with EOS) after an implicit BOS."""

  def __init__(self, params: Any, cfg: BLTConfig, *, window: int = 2048, stride: int | None = None,
               batch: int = 8):
    if window < 1 or batch < 1:
      raise ValueError(f"window and batch must be >= 1, got {window}, {batch}")
    self.params, self.cfg = params, cfg
    self.window, self.stride, self.batch = window, stride or max(1, window // 2), batch

  def nll(self, seqs: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per-position NLL (nats, float64) of every id of every sequence."""
    out = [np.zeros(len(s), np.float64) for s in seqs]
    jobs = [(i, *w) for i, s in enumerate(seqs) if len(s)
            for w in score.windows(len(s), self.window, self.stride)]
    jobs.sort(key=lambda j: j[3] - j[1])  # similar lengths share a bucket
    groups: dict[int, list] = {}
    top = _bucket(self.window + 1)
    for j in jobs:  # widths from 64 to the full window's: a handful of programs per run
      groups.setdefault(min(top, _bucket(j[3] - j[1] + 1, lo=64)), []).append(j)
    for width, js in groups.items():
      for k in range(0, len(js), self.batch):
        part = js[k:k + self.batch]
        ids = np.zeros((self.batch, width), np.int32)
        ids[:, 0] = BOS_ID
        lengths = np.ones((self.batch,), np.int32)  # padding rows: BOS alone
        for r, (i, s, _, e) in enumerate(part):
          ids[r, 1:1 + e - s] = seqs[i][s:e]
          lengths[r] = 1 + e - s
        nll = np.asarray(jax.device_get(_nll(self.params, jnp.asarray(ids),
                                                jnp.asarray(lengths), cfg=self.cfg)), np.float64)
        for r, (i, s, f, e) in enumerate(part):
          out[i][f:e] = nll[r, f - s:e - s]  # position j predicts id s + j
    return out

  def continuation_nll(self, pairs: Sequence[tuple[bytes, bytes]]) -> list[np.ndarray]:
    """Per-byte NLL of each continuation given BOS + its context."""
    seqs = [byte_ids(c + x) for c, x in pairs]
    return [v[len(c):] for v, (c, _) in zip(self.nll(seqs), pairs, strict=True)]
