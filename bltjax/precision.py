"""The precision a loaded model runs in: its weights' dtype, its compute dtype and its caches'.

`BLTConfig.param_dtype` is the dtype of the weight arrays; `BLTConfig.dtype` is the compute dtype:
every matmul casts its input and kernel to it (`layers.Einsum`), the residual stream and the
decoding caches are kept in it (`engine.cache_dtype`); norms, attention scores and softmax, the
logits and the loss stay fp32 whatever it is (docs/architecture.md, docs/decoding.md).

`apply` is the one place the command lines (decode.py, score, eval) turn a loaded checkpoint
into the precision asked for:

  dtype=None               as stored: the checkpoint's weights and its config's compute dtype
  dtype="bfloat16"         bf16 weights, bf16 compute and bf16 caches (the default bf16 mode)
  dtype=..., exact=True    weights in `dtype`, fp32 compute and fp32 caches (exact mode: each
                           matmul upcasts its bf16 kernel; BLT-S and BLT-DV greedy give AR
                           greedy's bytes, docs/decoding.md)

In Python the same modes are `cfg.replace(dtype=..., param_dtype=...)` with params of that dtype:
exact mode is `dataclasses.replace(cfg, dtype="float32")` over bf16 params, with
`use_exact_matmuls()` on TPU / GPU (whose default fp32 matmul precision is reduced); `apply(...,
exact=True)` does both.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from bltjax.config import BLTConfig

DTYPES = ("float32", "bfloat16", "float16")
EXACT_DTYPE = "float32"  # exact mode's compute and cache dtype


def apply(cfg: BLTConfig, params: Any, dtype: str | None = None, *, exact: bool = False
          ) -> tuple[BLTConfig, Any]:
  """(cfg, params) in the requested precision (see the module docstring).

  Args:
    cfg: the loaded config (its `param_dtype` describes `params`).
    params: the loaded parameter tree (already cast when the loader was given `dtype`: then
      nothing is copied here).
    dtype: weights and compute dtype (one of DTYPES), or None to keep the checkpoint's.
    exact: compute and caches in float32 whatever the weights' dtype, and fp32 matmuls at full
      precision process-wide (`use_exact_matmuls`).

  Returns:
    The config with `param_dtype` and `dtype` set, and the params in `param_dtype`.
  """
  if dtype is not None and dtype not in DTYPES:
    raise ValueError(f"dtype: must be one of {DTYPES} or None, got {dtype!r}")
  if dtype is not None:
    want = jnp.dtype(dtype)
    cast = lambda x: x.astype(want) if (  # noqa: E731
      jnp.issubdtype(x.dtype, jnp.floating) and x.dtype != want) else x
    params = jax.tree.map(cast, params)
    cfg = cfg.replace(param_dtype=dtype, dtype=dtype)
  if exact:
    cfg = cfg.replace(dtype=EXACT_DTYPE)
    use_exact_matmuls()
  return cfg, params


def use_exact_matmuls() -> None:
  """fp32 matmuls at full precision, process-wide: JAX's default runs them as one bf16 pass on TPU
  and as TF32 on recent GPUs, which would round exact mode's activations to ~bf16 again. The
  command lines get it with --exact through `apply`; the tests set the same (tests/conftest.py)."""
  jax.config.update("jax_default_matmul_precision", "highest")


def describe(cfg: BLTConfig) -> str:
  """One line for logs and run settings: weights / compute (= caches)."""
  return f"weights {cfg.param_dtype}, compute and caches {cfg.dtype}"


__all__ = ["DTYPES", "EXACT_DTYPE", "apply", "use_exact_matmuls", "describe"]
