"""XLA:CPU settings for batch-1 decoding, applied by the decoding entry points before JAX starts.

XLA:CPU hands every fp32 matmul of two rows or more to YNNPACK (a single row stays on its own
matrix-vector code). At batch 1 the decoding loops' multi-row matmuls are a few rows over weights
that do not fit in cache: a BLT-S verification's 2-5 patches through the global model, a BLT-D
block's 16 bytes through the decoder. There YNNPACK's kernels, several running at once on the two
cores, lose to XLA's own dot emitter: on `configs/bench_weightbound.py` at batch 1 a BLT-S k=8
cycle takes 85 ms with YNNPACK and 61 ms without, a BLT-D-16 block 79 ms and 69 ms. At batch 8
the opposite holds (AR 174 vs 149 bytes/s, BLT-D-16 335 vs 248), so the setting is chosen by
batch size (`benchmarks/fast_decode.py` measures both). The flag is CPU-only: GPU and TPU runs
ignore it.
"""

from __future__ import annotations

import os

NO_YNN_DOTS = "--xla_cpu_experimental_ynn_fusion_type="


def backend_started() -> bool:
  """Whether JAX has started its backends (after which XLA_FLAGS changes nothing)."""
  try:
    from jax._src import xla_bridge  # noqa: PLC0415 - no public equivalent

    return bool(xla_bridge.backends_are_initialized())
  except (ImportError, AttributeError):  # a JAX without it: assume not started
    return False


def tune_for_decoding(batch: int) -> bool:
  """Sets XLA_FLAGS for decoding `batch` rows at a time: YNNPACK off at batch 1. Only before
  JAX's first computation (XLA reads the flags when its backend starts; later, e.g. a second
  `decode.main` in one process, it leaves the environment alone); a flag the user set is kept.
  Returns whether it changed XLA_FLAGS."""
  flags = os.environ.get("XLA_FLAGS", "")
  if batch != 1 or "xla_cpu_experimental_ynn_fusion_type" in flags or backend_started():
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {NO_YNN_DOTS}".strip()
  return True
