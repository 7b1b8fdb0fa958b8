"""Timing of a jitted, donated Trainer step, shared by the training benchmarks (not run by
`make bench`: the leading underscore)."""

from __future__ import annotations

import time
from typing import Any


def time_steps(step, state, frozen, batch, steps: int, warmup: int
               ) -> tuple[Any, Any, Any, float, list[float]]:
  """Runs `step(state, frozen, batch)` once (compile), then `warmup + steps` more times.

  Returns (state, the first call's metrics, the last call's metrics, compile seconds, wall
  seconds of the `steps` timed calls). Every call is waited for, so times are device times.
  """
  import jax

  t = time.perf_counter()
  state, first = step(state, frozen, batch)
  jax.block_until_ready(first)
  compile_s = time.perf_counter() - t
  times, m = [], first
  for i in range(warmup + steps):
    t = time.perf_counter()
    state, m = step(state, frozen, batch)
    jax.block_until_ready(m)
    if i >= warmup:
      times.append(time.perf_counter() - t)
  return state, first, m, compile_s, times
