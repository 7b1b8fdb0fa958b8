"""Accelerator kernels for the training/prefill self-attention and the encoder's patch pooling.

`BLTConfig.attention` picks the self-attention kernel of every stack that `kernels.self_attention`
serves (local encoder/decoder, global model, entropy model); docs/kernels.md has the table.

  xla     the einsum kernels of `kernels.py` (the reference, and every fallback)
  pallas  Pallas splash attention (`jax.experimental.pallas.ops.tpu.splash_attention`): compiled
          for TPU when the program is lowered for TPU, run in Pallas interpret mode on other
          platforms (slow; the equality tests use it)
  cudnn   `jax.nn.dot_product_attention(implementation="cudnn")` (flash attention in cuDNN) for
          batches it can express, else xla, decided per batch on the device
  auto    traced on a GPU host: cudnn. Otherwise: splash when the program is lowered for TPU,
          xla for any other platform (`jax.lax.platform_dependent`, so a CPU host compiling
          ahead of time for TPU gets splash and a CPU run gets exactly the xla program), for rows
          of at least `SPLASH_MIN_SEQ` positions; shorter rows xla

The masks are BLT's `layers.local_mask` over sequence indices: key j visible from query i iff
0 <= i - j < W (W = window, or no bound for the global model), j valid, same document. Both kernels
take positions to be the sequence index, as every training and prefill caller builds them
(`model.defaults`, `model.byte_arrays`); the document is a segment id (splash) or must be one per
row (cuDNN). Padded queries give 0 (the xla kernels give them whatever their document's keys
give; no caller reads a padded position: it is neither a key nor a loss target).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from bltjax.modeling import sharding

log = logging.getLogger(__name__)

# auto keeps rows shorter than one splash block on xla: padding them to 128 costs more than it
# saves.
SPLASH_MIN_SEQ = 128
_LANES = 128  # splash's block sizes are multiples of the TPU lane count
PAD_SEGMENT = -(2**31)  # padded positions' segment id: no document has it


@functools.cache
def _warn(msg: str) -> None:
  log.warning(msg)


def splash_module():
  """`splash_attention`, or None where this jax has no such module."""
  try:
    from jax.experimental.pallas.ops.tpu import splash_attention
  except ImportError:  # pragma: no cover - depends on the jax build
    return None
  return splash_attention


def splash_layout(seq_len: int) -> tuple[int, int]:
  """(block, padded length) for splash: the largest block of 512/256/128 whose padding stays
  within 1/16 of the shortest 128-multiple (8192 -> 512, 2049 -> 256 over 2304 slots)."""
  shortest = -(-seq_len // _LANES) * _LANES
  for block in (512, 256, 128):
    padded = -(-seq_len // block) * block
    if padded <= shortest + shortest // 16:
      return block, padded
  return _LANES, shortest


def resolve(attention: str, seq_len: int) -> str:
  """The static kernel choice of one stack: "xla", "pallas", "cudnn" or "tpu_or_xla" (splash if
  the program is lowered for TPU, else xla). See the module docstring for the rules."""
  if attention == "xla":
    return "xla"
  if attention in ("pallas", "auto") and splash_module() is None:
    if attention == "pallas":
      _warn("model.attention=pallas: this jax has no splash_attention module; using xla")
    return "xla"
  if attention == "auto":
    if jax.default_backend() == "gpu":
      return "cudnn"
    return "tpu_or_xla" if seq_len >= SPLASH_MIN_SEQ else "xla"
  return attention


# ------------------------------------------------------------------------------------------------
# Splash attention (TPU).


def _splash_kernel(seq_len: int, n_heads: int, window: int | None, block: int, interpret: bool):
  sa = splash_module()
  shape = (seq_len, seq_len)
  # LocalMask (left, right) keeps i - left <= j <= i + right: W keys incl. self is (W - 1, 0).
  mask = sa.CausalMask(shape) if window is None else sa.LocalMask(shape, (window - 1, 0), 0)
  blocks = sa.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block,
                         block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
                         block_q_dq=block, block_kv_dq=block)
  # Built inside the trace (its mask tables become constants of the program being traced);
  # splash caches the numpy mask processing itself, so the layers share it.
  return sa.make_splash_mha(sa.MultiHeadMask([mask] * n_heads), block_sizes=blocks,
                            head_shards=1, q_seq_shards=1, interpret=interpret)


def _over_rows(fn: Callable, q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, seg_BxS):
  """fn per device under `shard_map` when a mesh is current: rows over the batch axes, heads
  over `tensor` when it divides both head counts (a Pallas call is not partitioned by XLA, which
  would otherwise gather every row onto every device)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return fn(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, seg_BxS)
  rules = sharding.ShardingRules()
  rows = tuple(a for a in rules.mesh_axes("batch") if a in mesh.axis_names)
  if q_BxSxHxK.shape[0] % math.prod(mesh.shape[a] for a in rows):
    rows = ()
  heads = tuple(a for a in rules.mesh_axes("heads") if a in mesh.axis_names)
  t = math.prod(mesh.shape[a] for a in heads)
  if q_BxSxHxK.shape[2] % t or k_BxSxGxK.shape[2] % t:
    heads = ()
  if not rows and not heads:
    return fn(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, seg_BxS)
  r, h = rows or None, heads or None
  qkv = P(r, None, h, None)
  return jax.shard_map(fn, in_specs=(qkv, qkv, qkv, P(r, None)), out_specs=qkv,
                       check_vma=False)(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, seg_BxS)


def splash_attend(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, doc_BxS, valid_BxS, window: int | None,
                  interpret: bool = False):
  """BLT's local/causal document attention through splash: [B, S, H, K], GQA by head groups.

  Rows are padded to a multiple of the block (`splash_layout`) with a segment no valid query
  shares; padded and invalid queries return 0. Splash has its own VJP.
  """
  b, s, h, kd = q_BxSxHxK.shape
  block, sp = splash_layout(s)
  padr = lambda x, fill=0: jnp.pad(x, [(0, 0), (0, sp - s)] + [(0, 0)] * (x.ndim - 2),
                                   constant_values=fill)
  seg_BxS = padr(jnp.where(valid_BxS, doc_BxS, PAD_SEGMENT).astype(jnp.int32), PAD_SEGMENT)
  # Splash does not scale the logits; `attend` divides them by sqrt(K).
  q = q_BxSxHxK * jnp.asarray(1 / math.sqrt(kd), q_BxSxHxK.dtype)
  sa = splash_module()

  def local(q_, k_, v_, seg_):  # one device's [b, Sp, h, K] share
    kern = _splash_kernel(sp, q_.shape[2], window, block, interpret)
    heads_first = lambda x: x.transpose(0, 2, 1, 3)
    o = jax.vmap(lambda qq, kk, vv, ss: kern(qq, kk, vv, segment_ids=sa.SegmentIds(ss, ss)))(
      heads_first(q_), heads_first(k_), heads_first(v_), seg_)
    return heads_first(o)

  o = _over_rows(local, padr(q), padr(k_BxSxGxK), padr(v_BxSxGxK), seg_BxS)[:, :s]
  return jnp.where(valid_BxS[:, :, None, None], o, 0).astype(v_BxSxGxK.dtype)


def pallas_attend(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, doc_BxS, valid_BxS, window: int | None):
  """Splash compiled where the program is lowered for TPU, interpreted elsewhere."""
  run = lambda interpret: lambda q, k, v, d, m: splash_attend(q, k, v, d, m, window, interpret)
  return jax.lax.platform_dependent(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, doc_BxS, valid_BxS,
                                    tpu=run(False), default=run(True))


def tpu_or_xla(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, doc_BxS, valid_BxS, window: int | None,
               xla: Callable):
  """Splash where the program is lowered for TPU, `xla(q, k, v)` elsewhere (the other branch is
  pruned at lowering, so a CPU run compiles exactly the xla program)."""
  return jax.lax.platform_dependent(
    q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, doc_BxS, valid_BxS,
    tpu=lambda q, k, v, d, m: splash_attend(q, k, v, d, m, window),
    default=lambda q, k, v, d, m: xla(q, k, v))


def by_backend(attention: str, tpu_fn: Callable, xla_fn: Callable, *args):
  """`tpu_fn(*args)` for attention "pallas", and for "auto" where the program is lowered for TPU
  (`platform_dependent`; a GPU host keeps xla); `xla_fn(*args)` otherwise. For the pooling's
  scatter-free forms (`kernels.PatchRuns`), which equal the scatter forms."""
  if attention == "pallas":
    return tpu_fn(*args)
  if attention == "auto" and jax.default_backend() != "gpu":
    return jax.lax.platform_dependent(*args, tpu=tpu_fn, default=xla_fn)
  return xla_fn(*args)


# ------------------------------------------------------------------------------------------------
# cuDNN flash attention (GPU) through jax.nn.dot_product_attention.


def cudnn_unfit(dtype, head_dim: int) -> str | None:
  """Why cuDNN flash attention cannot take these inputs (None: it can)."""
  if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
    return f"cuDNN flash attention takes bfloat16/float16, got {jnp.dtype(dtype).name}"
  if head_dim % 8 or head_dim > 256:
    return f"cuDNN flash attention needs head_dim a multiple of 8 up to 256, got {head_dim}"
  return None


def dpa_attend(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, valid_BxS, window: int | None,
               implementation: str | None):
  """`jax.nn.dot_product_attention` under BLT's mask for rows of one document whose valid
  positions are a prefix: causal, left window W - 1 (W keys incl. self), key/query lengths for
  the padding; padded queries give 0. The mask `cudnn_attend` checks each batch against."""
  lengths_B = jnp.sum(valid_BxS, axis=1, dtype=jnp.int32)
  o = jax.nn.dot_product_attention(
    q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, is_causal=True, query_seq_lengths=lengths_B,
    key_value_seq_lengths=lengths_B,
    local_window_size=None if window is None else (window - 1, 0),
    implementation=implementation)
  return jnp.where(valid_BxS[:, :, None, None], o, 0).astype(v_BxSxGxK.dtype)


def dpa_fits(pos_BxS, doc_BxS, valid_BxS) -> jax.Array:
  """Whether every row is what `dpa_attend` expresses: one document, valid positions a prefix,
  positions the index plus a constant (a scalar bool, computed on the device)."""
  s = pos_BxS.shape[1]
  idx = jnp.arange(s, dtype=jnp.int32)
  prefix = valid_BxS == (idx[None, :] < jnp.sum(valid_BxS, axis=1, keepdims=True))
  one_doc = (doc_BxS == doc_BxS[:, :1]) | ~valid_BxS
  steps = (pos_BxS - pos_BxS[:, :1] == idx[None, :]) | ~valid_BxS
  return jnp.all(prefix & one_doc & steps)


def cudnn_attend(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, pos_BxS, doc_BxS, valid_BxS,
                 window: int | None, xla: Callable, implementation: str = "cudnn"):
  """cuDNN for batches of single-document, right-padded rows (`dpa_fits`), `xla(q, k, v)` for
  others (packed documents), chosen on the device by `lax.cond`. Inputs cuDNN cannot take
  (dtype, head_dim; or a jax that rejects the call while tracing) use xla, with a warning."""
  why = cudnn_unfit(q_BxSxHxK.dtype, q_BxSxHxK.shape[-1]) if implementation == "cudnn" else None
  if why is None:
    try:
      o = jax.lax.cond(
        dpa_fits(pos_BxS, doc_BxS, valid_BxS),
        lambda q, k, v: dpa_attend(q, k, v, valid_BxS, window, implementation), xla,
        q_BxSxHxK, k_BxSxGxK, v_BxSxGxK)
      return jnp.where(valid_BxS[:, :, None, None], o, 0)  # padded queries: 0 either way
    except (NotImplementedError, RuntimeError, ValueError) as e:  # cuDNN absent / shape refused
      why = f"{type(e).__name__}: {e}"
  _warn(f"model.attention (cuDNN): {why}; this attention uses xla")
  return xla(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK)


__all__ = ["SPLASH_MIN_SEQ", "PAD_SEGMENT", "splash_module", "splash_layout", "resolve",
           "splash_attend", "pallas_attend", "tpu_or_xla", "by_backend", "cudnn_unfit",
           "dpa_attend", "dpa_fits", "cudnn_attend"]
