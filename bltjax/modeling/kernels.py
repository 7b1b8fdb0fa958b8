"""The attention kernels of training, one set for BLT, BLT-D, the entropy model and scoring.

Every kernel is exact: it gives the dense masked `layers.attend` result (up to float summation
order), with masked keys at probability 0 and rows without a visible key at 0, but never builds an
O(S²) array for long rows.

  local_attend        local causal attention (window W incl. self, same document): dense [S, S]
                      under `layers.local_mask`, or *segments* of Q queries against the keys of
                      their own and the ceil((W-1)/Q) previous segments, [S/Q, Q, (n_W + 1)·Q]
                      scores per head, `seg_chunk` segments per rematerialised `lax.map` step
  causal_attend       plain causal attention (no window: the global model over patches) as an
                      online softmax over key blocks (FlashAttention, arXiv 2205.14135 §3.1):
                      [T, T] scores per head and step, never [P, P]
  LocalPattern        either as a stand-in for a dense mask: `layers.run_stack` and
                      `layers.Block` take either (the decoding engine keeps passing masks)
  patch_attend        the encoder's pooling cross-attention (C queries per patch read the bytes
                      of their patch) as a per-patch segment softmax: O(S·C) scores, not the
                      dense [P·C, S]
  block_attend, block_prefix_attend, block_dense_prefix_attend
                      BLT-D's block stream against its clean prefix (arXiv 2605.08044; docs/bltd.md)
  local_plan, pool_is_segmented, AttnPlan / make_plan
                      dense, segmented or blocked, chunk sizes: from static shapes only, so one
                      config gives one program; every choice gives the same values

Chunking keeps one layer's transient attention buffers (scores, probabilities, gathered K/V) under
`CHUNK_BUDGET_BYTES` per row.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from bltjax.config import BLTConfig, TransformerConfig
from bltjax.modeling import accel
from bltjax.modeling.layers import (
  AttnKernel,
  attend,
  local_mask,
  online_softmax,
  online_softmax_result,
)

# Transient attention buffers (scores, probabilities, gathered K/V) per row per chunk: chunking
# starts when one layer's attention would need more than this.
CHUNK_BUDGET_BYTES = 256 * 2**20


# ------------------------------------------------------------------------------------------------
# Local self-attention and the segment layout.


def map_chunks(fn: Callable[..., Any], chunk: int | None, *xs: jnp.ndarray):
  """fn over axis 1 of every x ([B, N, ...]), `chunk` items at a time, rematerialised.

  The chunk axis is the sequential one, so every iteration still holds all B rows (data
  parallelism is untouched). Checkpointing the body keeps only its inputs for the backward pass.
  """
  n = xs[0].shape[1]
  if chunk is None or chunk >= n:
    return fn(*xs)
  nc = -(-n // chunk)

  def split(x):
    x = jnp.pad(x, [(0, 0), (0, nc * chunk - n)] + [(0, 0)] * (x.ndim - 2))
    return jnp.moveaxis(x.reshape(x.shape[0], nc, chunk, *x.shape[2:]), 1, 0)

  out = jax.lax.map(jax.checkpoint(lambda a: fn(*a)), tuple(split(x) for x in xs))
  merge = lambda y: jnp.moveaxis(y, 0, 1).reshape(y.shape[1], nc * chunk, *y.shape[3:])[:, :n]
  return jax.tree_util.tree_map(merge, out)


def fold(x):
  return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _segment_keys(x_BxSx: jnp.ndarray, q: int, n_prev: int, fill) -> jnp.ndarray:
  """[B, S, ...] -> [B, S/Q, (n_prev + 1)·Q, ...]: each segment's keys incl. n_prev before it."""
  b, s = x_BxSx.shape[:2]
  nseg = s // q
  pad = [(0, 0), (n_prev * q, 0)] + [(0, 0)] * (x_BxSx.ndim - 2)
  xr = jnp.pad(x_BxSx, pad, constant_values=fill).reshape(b, nseg + n_prev, q, *x_BxSx.shape[2:])
  parts = [xr[:, j:j + nseg] for j in range(n_prev + 1)]
  return jnp.concatenate(parts, axis=2)


def local_attend(q_BxSxHxK: jnp.ndarray, k_BxSxGxK: jnp.ndarray, v_BxSxGxK: jnp.ndarray,
                 pos_BxS: jnp.ndarray, doc_BxS: jnp.ndarray, valid_BxS: jnp.ndarray,
                 window: int | None, segment: int | None = None,
                 seg_chunk: int | None = None) -> jnp.ndarray:
  """Local causal attention (window W incl. self, same document): dense or segmented.

  `segment` = Q: queries [cQ, (c+1)Q) see keys [(c - n_W)Q, (c+1)Q) with n_W = ceil((W-1)/Q),
  which holds every key the window allows, so the result equals the dense form up to float
  summation order. `seg_chunk` segments run per `lax.map` step (rematerialised).
  """
  if segment is None or window is None:
    mask = local_mask(pos_BxS, pos_BxS, doc_BxS, doc_BxS, valid_BxS, window)
    return attend(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, mask)
  b, s = pos_BxS.shape
  qn = segment
  n_prev = -(-(window - 1) // qn)
  sp = -(-s // qn) * qn
  padr = lambda x, fill=0: jnp.pad(x, [(0, 0), (0, sp - s)] + [(0, 0)] * (x.ndim - 2),
                                   constant_values=fill)
  q, k, v = padr(q_BxSxHxK), padr(k_BxSxGxK), padr(v_BxSxGxK)
  pos, doc, valid = padr(pos_BxS), padr(doc_BxS), padr(valid_BxS, False)
  nseg = sp // qn
  seg = lambda x: x.reshape(b, nseg, qn, *x.shape[2:])
  ks, vs = _segment_keys(k, qn, n_prev, 0), _segment_keys(v, qn, n_prev, 0)
  kpos = _segment_keys(pos, qn, n_prev, 0)
  kdoc = _segment_keys(doc, qn, n_prev, 0)
  kvalid = _segment_keys(valid, qn, n_prev, False)

  def body(q_, k_, v_, qpos, qdoc, kpos_, kdoc_, kval):
    bb, c = q_.shape[:2]
    m = local_mask(fold(qpos), fold(kpos_), fold(qdoc), fold(kdoc_), fold(kval), window)
    o = attend(fold(q_), fold(k_), fold(v_), m)
    return o.reshape(bb, c, *o.shape[1:])

  o = map_chunks(body, seg_chunk, seg(q), ks, vs, seg(pos), seg(doc), kpos, kdoc, kvalid)
  return o.reshape(b, sp, *o.shape[3:])[:, :s]


def causal_attend(q_BxSxHxK: jnp.ndarray, k_BxSxGxK: jnp.ndarray, v_BxSxGxK: jnp.ndarray,
                  pos_BxS: jnp.ndarray, doc_BxS: jnp.ndarray, valid_BxS: jnp.ndarray,
                  block: int) -> jnp.ndarray:
  """Causal same-document attention over blocks of T = `block` queries and keys.

  Equals `attend` under `local_mask(..., window=None)` (up to float summation order) when
  positions increase along each row, as patch and byte indices do: key blocks after a query block
  hold no visible key and are skipped (`lax.cond` on the block indices). Query blocks run under a
  rematerialised `lax.map`; each scans the key blocks carrying the running max, sum and weighted
  values (FlashAttention's online softmax, arXiv 2205.14135 §3.1) with a checkpointed step, so
  the backward pass keeps per key block only that running state, never [T, S] probabilities.
  """
  b, s, h, kd = q_BxSxHxK.shape
  g = k_BxSxGxK.shape[2]
  n = -(-s // block)
  padr = lambda x, fill=0: jnp.pad(x, [(0, 0), (0, n * block - s)] + [(0, 0)] * (x.ndim - 2),
                                   constant_values=fill)
  blocks = lambda x: jnp.moveaxis(x.reshape(b, n, block, *x.shape[2:]), 1, 0)  # [N, B, T, ...]
  q_NxBxTxGxRxK = blocks(padr(q_BxSxHxK).reshape(b, n * block, g, h // g, kd))
  k_NxBxTxGxK, v_NxBxTxGxK = blocks(padr(k_BxSxGxK)), blocks(padr(v_BxSxGxK))
  pos_NxBxT, doc_NxBxT = blocks(padr(pos_BxS)), blocks(padr(doc_BxS))
  valid_NxBxT = blocks(padr(valid_BxS, False))
  idx_N = jnp.arange(n, dtype=jnp.int32)
  keys = (idx_N, k_NxBxTxGxK, v_NxBxTxGxK, pos_NxBxT, doc_NxBxT, valid_NxBxT)

  def query_block(args):
    i, q, qpos, qdoc = args

    def visit(carry, kb):
      _, k, v, kpos, kdoc, kvalid = kb
      mask = local_mask(qpos, kpos, qdoc, kdoc, kvalid, None)[:, None, None]
      sc = jnp.einsum("bqgrk,btgk->bgrqt", q, k,
                      preferred_element_type=jnp.float32) / math.sqrt(kd)
      return online_softmax(carry, sc, mask, lambda e: jnp.einsum(
        "bgrqt,btgk->bgrqk", e.astype(v.dtype), v, preferred_element_type=jnp.float32))

    def step(carry, kb):
      return jax.lax.cond(kb[0] <= i, visit, lambda c, _: c, carry, kb), None

    init = (jnp.full((b, g, h // g, block), -jnp.inf, jnp.float32),
            jnp.zeros((b, g, h // g, block), jnp.float32),
            jnp.zeros((b, g, h // g, block, kd), jnp.float32))
    acc, _ = jax.lax.scan(jax.checkpoint(step), init, keys)
    o = online_softmax_result(acc)
    return o.transpose(0, 3, 1, 2, 4).reshape(b, block, h, kd).astype(v_BxSxGxK.dtype)

  o_NxBxTxHxK = jax.lax.map(jax.checkpoint(query_block),
                            (idx_N, q_NxBxTxGxRxK, pos_NxBxT, doc_NxBxT))
  return jnp.moveaxis(o_NxBxTxHxK, 0, 1).reshape(b, n * block, h, kd)[:, :s]


@flax.struct.dataclass
class LocalPattern(AttnKernel):
  """`local_attend` (or, with `block`, `causal_attend`) over one row layout, passed where a
  dense mask would go (`layers.Block`).

  A pytree (positions, documents, validity are leaves; window and layout static), so it crosses
  `nn.remat` like a mask does.
  """

  pos_BxS: jax.Array
  doc_BxS: jax.Array
  valid_BxS: jax.Array
  window: int | None = flax.struct.field(pytree_node=False, default=None)
  segment: int | None = flax.struct.field(pytree_node=False, default=None)
  seg_chunk: int | None = flax.struct.field(pytree_node=False, default=None)
  block: int | None = flax.struct.field(pytree_node=False, default=None)

  impl: str = flax.struct.field(pytree_node=False, default="xla")  # `accel.resolve`

  def attend(self, q_BxSxHxK, k_BxSxGxK, v_BxSxGxK):
    args = (q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, self.doc_BxS, self.valid_BxS, self.window)
    if self.impl == "pallas":
      return accel.pallas_attend(*args)
    if self.impl == "tpu_or_xla":
      return accel.tpu_or_xla(*args, xla=self.xla_attend)
    if self.impl == "cudnn":
      return accel.cudnn_attend(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, self.pos_BxS, self.doc_BxS,
                                self.valid_BxS, self.window, self.xla_attend)
    return self.xla_attend(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK)

  def xla_attend(self, q_BxSxHxK, k_BxSxGxK, v_BxSxGxK):
    """The einsum kernels (the reference): blocked causal, segmented or dense local."""
    if self.block is not None:
      return causal_attend(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, self.pos_BxS, self.doc_BxS,
                           self.valid_BxS, self.block)
    return local_attend(q_BxSxHxK, k_BxSxGxK, v_BxSxGxK, self.pos_BxS, self.doc_BxS,
                        self.valid_BxS, self.window, self.segment, self.seg_chunk)


@dataclasses.dataclass(frozen=True)
class LocalPlan:
  segment: int | None = None  # Q of the segment form; None = dense [S, S]
  chunk: int | None = None  # segments per lax.map step
  block: int | None = None  # T of the blocked causal form (no window); None = dense [S, S]


# Queries and keys per block of `causal_attend`: [H, T, T] fp32 scores per step (16 MiB at
# H = 16); larger blocks only shorten the loops.
CAUSAL_BLOCK = 512


def causal_block(seq_len: int, target: int = CAUSAL_BLOCK) -> int:
  """T for S positions: ceil(S / target) blocks of equal size (a multiple of 8), so padding
  stays under 8·blocks slots (4098 patches: 9 blocks of 456, not 512)."""
  n = -(-seq_len // target)
  t = -(-seq_len // n)
  return -(-t // 8) * 8


def local_plan(st: TransformerConfig, seq_len: int, segment: int | str | None = "auto",
               budget: int = CHUNK_BUDGET_BYTES) -> LocalPlan:
  """The layout of one self-attention stack over rows of `seq_len`.

  Windowed: segments once dense [S, S] attention would waste > 2x (S > 2W); Q = min(W, 256).
  Plain causal (the global model): blocks once one layer's dense scores, probabilities and
  gradient (12 bytes per score and head) exceed `budget`. `segment=None` forces dense.
  """
  w = st.window
  if w is None:
    dense = segment is None or 12 * st.n_heads * seq_len * seq_len <= budget
    return LocalPlan() if dense else LocalPlan(block=causal_block(seq_len))
  if segment == "auto":
    segment = None if seq_len <= 2 * w else min(w, 256)
  if segment is None:
    return LocalPlan()
  n_prev = -(-(w - 1) // segment)
  per_seg = 12 * st.n_heads * segment * (n_prev + 1) * segment + 8 * (n_prev + 1) * segment * st.dim
  return LocalPlan(segment, max(1, budget // per_seg))


def self_attention(st: TransformerConfig, pos_BxS, doc_BxS, valid_BxS,
                   segment: int | str | None = "auto", attention: str = "xla"):
  """What a stack's `run_stack` attends under: the dense mask, the segment or the block pattern.

  `attention` (`BLTConfig.attention`): "xla" keeps these einsum kernels; the accelerator kernels
  ("auto", "pallas", "cudnn"; `accel.resolve`) come as a `LocalPattern` whose xla fallback is the
  same plan.
  """
  plan = local_plan(st, pos_BxS.shape[1], segment)
  impl = accel.resolve(attention, pos_BxS.shape[1])
  if plan.segment is None and plan.block is None and impl == "xla":
    return local_mask(pos_BxS, pos_BxS, doc_BxS, doc_BxS, valid_BxS, st.window)
  return LocalPattern(pos_BxS, doc_BxS, valid_BxS, st.window, plan.segment, plan.chunk,
                      plan.block, impl)


# ------------------------------------------------------------------------------------------------
# Pooling: C queries per patch read the bytes of their patch.


def pool_is_segmented(n_heads: int, num_queries: int, seq_len: int,
                      budget: int = CHUNK_BUDGET_BYTES) -> bool:
  """Segment softmax once the dense [H, P·C, S] fp32 scores of one row exceed `budget`."""
  return 4 * n_heads * num_queries * seq_len > budget


def patch_mask(patch_ids_BxS, valid_BxS, num_patches: int, k: int):
  """Dense pooling mask [B, P·C, S]: query c of patch p sees the valid bytes of patch p."""
  qpatch = jnp.arange(num_patches * k) // k
  return (patch_ids_BxS[:, None, :] == qpatch[None, :, None]) & valid_BxS[:, None, :]


def _take(x_BxNx, idx_BxM):
  """x[b, idx[b, m]] along axis 1: [B, M, ...]."""
  return jnp.take_along_axis(x_BxNx, idx_BxM.reshape(idx_BxM.shape + (1,) * (x_BxNx.ndim - 2)),
                             axis=1)


def _segment_scan(x_BxSx, ids_BxS, op, reverse: bool = False):
  """Inclusive scan of op along axis 1 that restarts wherever the id changes."""
  ids = jnp.broadcast_to(ids_BxS.reshape(ids_BxS.shape + (1,) * (x_BxSx.ndim - 2)), x_BxSx.shape)

  def combine(a, b):
    (xa, ia), (xb, ib) = a, b
    return jnp.where(ia == ib, op(xa, xb), xb), ib

  return jax.lax.associative_scan(combine, (x_BxSx, ids), axis=1, reverse=reverse)[0]


def _expand(m_BxN, x):
  return m_BxN.reshape(m_BxN.shape + (1,) * (x.ndim - 2))


# Gathers between bytes and patches whose backward passes are gathers and scans too: the
# transpose of a plain gather is a scatter-add (what `PatchRuns` is there to avoid).
@jax.custom_vjp
def _patch_to_bytes(x_BxPx, ids_BxS, last_BxP, has_BxP):
  return _take(x_BxPx, ids_BxS)


def _patch_to_bytes_fwd(x_BxPx, ids_BxS, last_BxP, has_BxP):
  return _take(x_BxPx, ids_BxS), (ids_BxS, last_BxP, has_BxP)


def _patch_to_bytes_bwd(res, ct_BxSx):
  ids_BxS, last_BxP, has_BxP = res  # the sum of each patch's bytes' cotangents
  ct = _bytes_to_patch(_segment_scan(ct_BxSx, ids_BxS, jnp.add), ids_BxS, last_BxP, has_BxP)
  return ct, None, None, None


_patch_to_bytes.defvjp(_patch_to_bytes_fwd, _patch_to_bytes_bwd)


@jax.custom_vjp
def _bytes_to_patch(x_BxSx, ids_BxS, last_BxP, has_BxP):
  """x at each patch's last byte, 0 for a patch without bytes (their last_BxP collide)."""
  return jnp.where(_expand(has_BxP, x_BxSx), _take(x_BxSx, last_BxP), 0)


def _bytes_to_patch_fwd(x_BxSx, ids_BxS, last_BxP, has_BxP):
  return _bytes_to_patch(x_BxSx, ids_BxS, last_BxP, has_BxP), (ids_BxS, last_BxP, has_BxP)


def _bytes_to_patch_bwd(res, ct_BxPx):
  ids_BxS, last_BxP, has_BxP = res  # byte t gets its patch's cotangent iff it is the last byte
  s = ids_BxS.shape[1]
  is_last = jnp.arange(s, dtype=jnp.int32)[None, :] == _take(last_BxP, ids_BxS)
  return (jnp.where(_expand(is_last, ct_BxPx), _take(ct_BxPx, ids_BxS), 0), None, None, None)


_bytes_to_patch.defvjp(_bytes_to_patch_fwd, _bytes_to_patch_bwd)


class PatchRuns:
  """Reductions over each patch's bytes without scatters, forward or backward (TPU executes
  scatters serially).

  Patches are contiguous byte ranges: patch ids never decrease along a row (`byte_arrays`).
  A segmented inclusive scan (`lax.associative_scan`, log S steps) carries each patch's running
  reduction, read at the patch's last byte; a reverse scan completes it at every byte. Patch
  bounds come from `searchsorted`. Invalid bytes enter as the reduction's identity.
  """

  def __init__(self, patch_ids_BxS, valid_BxS, num_patches: int):
    s = patch_ids_BxS.shape[1]
    self.ids_BxS = jnp.clip(patch_ids_BxS, 0, num_patches - 1).astype(jnp.int32)
    self.valid_BxS = valid_BxS
    p_P = jnp.arange(num_patches, dtype=jnp.int32)
    bound = lambda side: jax.vmap(lambda ids: jnp.searchsorted(ids, p_P, side=side))(
      self.ids_BxS).astype(jnp.int32)
    start_BxP, end_BxP = bound("left"), bound("right")
    self.last_BxP = jnp.clip(end_BxP - 1, 0, s - 1)
    self.has_BxP = end_BxP > start_BxP  # the patch has bytes (valid or not)
    cv = jnp.pad(jnp.cumsum(valid_BxS.astype(jnp.int32), axis=1), [(0, 0), (1, 0)])
    self.count_BxP = _take(cv, end_BxP) - _take(cv, start_BxP)  # valid bytes per patch

  def _masked(self, x_BxSx, identity):
    return jnp.where(_expand(self.valid_BxS, x_BxSx), x_BxSx, identity)

  def per_patch(self, x_BxSx, op, identity):
    """[B, P, ...]: op-reduction of each patch's valid bytes (identity where there are none)."""
    run = _segment_scan(self._masked(x_BxSx, identity), self.ids_BxS, op)
    out = _bytes_to_patch(run, self.ids_BxS, self.last_BxP, self.has_BxP)
    return jnp.where(_expand(self.count_BxP > 0, out), out, identity)

  def at_byte(self, x_BxSx, op, identity):
    """[B, S, ...]: at each byte, the reduction of its patch's valid bytes."""
    x = self._masked(x_BxSx, identity)
    fwd = _segment_scan(x, self.ids_BxS, op)
    rev = _segment_scan(x, self.ids_BxS, op, reverse=True)  # inclusive from the right
    nxt_same = jnp.pad(self.ids_BxS[:, 1:] == self.ids_BxS[:, :-1], [(0, 0), (0, 1)])
    rev_excl = jnp.pad(rev[:, 1:], [(0, 0), (0, 1)] + [(0, 0)] * (x.ndim - 2))
    return op(fwd, jnp.where(_expand(nxt_same, x), rev_excl, identity))

  def to_bytes(self, x_BxPx):
    """[B, S, ...]: each byte's patch row of x (its backward sums by patch with scans)."""
    return _patch_to_bytes(x_BxPx, self.ids_BxS, self.last_BxP, self.has_BxP)


def max_pool(h_BxSxD, patch_ids_BxS, valid_BxS, num_patches: int, scan: bool = False,
             open_BxD=None):
  """Max of each patch's valid byte states, 0 for a patch without one: [B, P, D]. The one
  max-pool of the package: training's pooling and decoding's open patch.

  `open_BxD`: the running max of patch 0's earlier bytes (decoding: the patch left open by the
  previous call; -inf where there are none), merged in. `scan`: scatter-free (`PatchRuns`, for
  TPU); otherwise `segment_max` (one patch: a masked max). Same values."""
  if scan:
    pooled = PatchRuns(patch_ids_BxS, valid_BxS, num_patches).per_patch(h_BxSxD, jnp.maximum,
                                                                        -jnp.inf)
  elif num_patches == 1:
    ok_BxS = valid_BxS & (patch_ids_BxS == 0)
    pooled = jnp.max(jnp.where(ok_BxS[..., None], h_BxSxD, -jnp.inf), axis=1, keepdims=True)
  else:
    seg_BxS = jnp.where(valid_BxS, patch_ids_BxS, num_patches)  # pads go to a dropped segment
    pooled = jax.vmap(lambda h, i: jax.ops.segment_max(h, i, num_segments=num_patches + 1))(
      h_BxSxD, seg_BxS)[:, :num_patches]
  if open_BxD is not None:
    pooled = pooled.at[:, 0].set(jnp.maximum(pooled[:, 0], open_BxD.astype(pooled.dtype)))
  # A patch without a byte is -inf (the max's identity; byte states are finite): 0.
  return jnp.where(jnp.isneginf(pooled), 0, pooled).astype(h_BxSxD.dtype)


def patch_attend(q_BxPxCxHxK, k_BxSxHxK, v_BxSxHxK, patch_ids_BxS, valid_BxS,
                 scan: bool = False) -> jnp.ndarray:
  """Pooling cross-attention as a per-patch segment softmax: [B, P, C, H, K].

  Equals `attend` under `patch_mask` (patches without a byte give 0) in O(S·C·H) memory: each
  byte scores only its own patch's C queries; max, sum and the weighted values reduce by patch,
  by segment scatters or (`scan`, for TPU) by `PatchRuns`.
  """
  p = q_BxPxCxHxK.shape[1]
  seg_BxS = jnp.where(valid_BxS, patch_ids_BxS, p)  # pads go to a dropped segment
  if scan:
    return _patch_attend_scan(q_BxPxCxHxK, k_BxSxHxK, v_BxSxHxK,
                              PatchRuns(patch_ids_BxS, valid_BxS, p))
  by_patch = lambda x, op: jax.vmap(lambda xx, i: op(xx, i, num_segments=p + 1))(x, seg_BxS)
  at_byte = lambda x_BxPx: jnp.take_along_axis(x_BxPx, seg_BxS[:, :, None, None], axis=1)
  q_BxSxCxHxK = jnp.take_along_axis(
    q_BxPxCxHxK, jnp.minimum(seg_BxS, p - 1)[:, :, None, None, None], axis=1)
  sc = jnp.einsum("bschk,bshk->bsch", q_BxSxCxHxK, k_BxSxHxK,
                  preferred_element_type=jnp.float32) / math.sqrt(k_BxSxHxK.shape[-1])
  vmask = valid_BxS[:, :, None, None]
  # The softmax shift carries no gradient (softmax is invariant to it).
  mx = jax.lax.stop_gradient(at_byte(by_patch(jnp.where(vmask, sc, -jnp.inf), jax.ops.segment_max)))
  e = jnp.where(vmask, jnp.exp(sc - jnp.where(vmask, mx, 0.0)), 0.0)
  den = at_byte(by_patch(e, jax.ops.segment_sum))
  prob = (e / jnp.where(den > 0, den, 1.0)).astype(v_BxSxHxK.dtype)  # rounded like `attend`
  pv = prob[..., None].astype(jnp.float32) * v_BxSxHxK[:, :, None].astype(jnp.float32)
  return by_patch(pv, jax.ops.segment_sum)[:, :p].astype(v_BxSxHxK.dtype)


def _patch_attend_scan(q_BxPxCxHxK, k_BxSxHxK, v_BxSxHxK, runs: PatchRuns) -> jnp.ndarray:
  """`patch_attend`'s segment softmax with `PatchRuns` (no scatter, forward or backward)."""
  q_BxSxCxHxK = runs.to_bytes(q_BxPxCxHxK)
  sc = jnp.einsum("bschk,bshk->bsch", q_BxSxCxHxK, k_BxSxHxK,
                  preferred_element_type=jnp.float32) / math.sqrt(k_BxSxHxK.shape[-1])
  vmask = runs.valid_BxS[:, :, None, None]
  mx = jax.lax.stop_gradient(runs.at_byte(sc, jnp.maximum, -jnp.inf))
  e = jnp.where(vmask, jnp.exp(sc - jnp.where(vmask, mx, 0.0)), 0.0)
  den = runs.at_byte(e, jnp.add, 0.0)
  prob = (e / jnp.where(den > 0, den, 1.0)).astype(v_BxSxHxK.dtype)  # rounded like `attend`
  pv = prob[..., None].astype(jnp.float32) * v_BxSxHxK[:, :, None].astype(jnp.float32)
  return runs.per_patch(pv, jnp.add, 0.0).astype(v_BxSxHxK.dtype)


# ------------------------------------------------------------------------------------------------
# BLT-D blocks (arXiv 2605.08044; docs/bltd.md).


def block_attend(q_BxMxZxHxK: jnp.ndarray, k_BxMxZxGxK: jnp.ndarray, v_BxMxZxGxK: jnp.ndarray,
                 valid_BxMxZ: jnp.ndarray, kp_BxMxTxGxK: jnp.ndarray, vp_BxMxTxGxK: jnp.ndarray,
                 pmask_BxMxT: jnp.ndarray) -> jnp.ndarray:
  """The block pattern: each block sees its T prefix keys (pmask) and its own valid slots.

  Scores are [B·M, H, Z, T + Z]; keys of other blocks are simply not in the tensor.
  """
  b, m, z = valid_BxMxZ.shape
  t = pmask_BxMxT.shape[2]
  keys = jnp.concatenate([kp_BxMxTxGxK, k_BxMxZxGxK], axis=2)
  vals = jnp.concatenate([vp_BxMxTxGxK, v_BxMxZxGxK], axis=2)
  mask_BxMxZxTZ = jnp.concatenate([
    jnp.broadcast_to(pmask_BxMxT[:, :, None, :], (b, m, z, t)),
    jnp.broadcast_to(valid_BxMxZ[:, :, None, :], (b, m, z, z))], axis=3)
  o = attend(fold(q_BxMxZxHxK), fold(keys), fold(vals), fold(mask_BxMxZxTZ))
  return o.reshape(b, m, *o.shape[1:])


def block_prefix_attend(q_BxMxZxHxK: jnp.ndarray, k_BxMxZxGxK: jnp.ndarray,
                        v_BxMxZxGxK: jnp.ndarray, valid_BxMxZ: jnp.ndarray,
                        start_BxM: jnp.ndarray, doc_BxM: jnp.ndarray, kc_BxSxGxK: jnp.ndarray,
                        vc_BxSxGxK: jnp.ndarray, cvalid_BxS: jnp.ndarray, cdoc_BxS: jnp.ndarray,
                        window: int | None, chunk: int | None = None) -> jnp.ndarray:
  """Blocks against the clean stream of the same rows (training layout, §3.7 step 2).

  Block m gathers clean rows j in [s_m - W, s_m) (W = S when `window` is None), visible when
  j >= 0, valid and in the block's document; clean positions are the indices 0..S-1.
  """
  b, s = cvalid_BxS.shape
  w = s if window is None else min(window, s)  # no key before position 0 exists
  rows = jnp.arange(b, dtype=jnp.int32)[:, None, None]

  def body(q, k, v, val, start, doc):
    j_BxCxW = start[:, :, None] - w + jnp.arange(w, dtype=jnp.int32)[None, None, :]
    jc = jnp.clip(j_BxCxW, 0, s - 1)
    pmask = (j_BxCxW >= 0) & cvalid_BxS[rows, jc] & (cdoc_BxS[rows, jc] == doc[:, :, None])
    return block_attend(q, k, v, val, kc_BxSxGxK[rows, jc], vc_BxSxGxK[rows, jc], pmask)

  return map_chunks(body, chunk, q_BxMxZxHxK, k_BxMxZxGxK, v_BxMxZxGxK, valid_BxMxZ,
                     start_BxM, doc_BxM)


def block_dense_prefix_attend(q_BxMxZxHxK: jnp.ndarray, k_BxMxZxGxK: jnp.ndarray,
                              v_BxMxZxGxK: jnp.ndarray, valid_BxMxZ: jnp.ndarray,
                              start_BxM: jnp.ndarray, doc_BxM: jnp.ndarray,
                              kc_BxSxGxK: jnp.ndarray, vc_BxSxGxK: jnp.ndarray,
                              cvalid_BxS: jnp.ndarray, cdoc_BxS: jnp.ndarray, window: int | None,
                              chunk: int | None = None) -> jnp.ndarray:
  """Same result as `block_prefix_attend` without gathering: for rows of up to ~2W bytes.

  A chunk of C blocks attends [all S clean keys ; the chunk's C·Z block keys] under the §3.5
  mask (window from the block start, block-diagonal among blocks): [C·Z, S + C·Z] scores per
  head. No per-block copy of W clean K/V rows, which costs W/Z times the block stream itself.
  """
  b, s = cvalid_BxS.shape
  j_1x1xS = jnp.arange(s, dtype=jnp.int32)[None, None, :]

  def body(q, k, v, val, start, doc):
    c, z = val.shape[1:]
    pm = ((j_1x1xS < start[:, :, None]) & cvalid_BxS[:, None, :]
          & (cdoc_BxS[:, None, :] == doc[:, :, None]))
    if window is not None:
      pm &= j_1x1xS >= start[:, :, None] - window
    pm_BxCZxS = jnp.broadcast_to(pm[:, :, None, :], (b, c, z, s)).reshape(b, c * z, s)
    own = jnp.eye(c, dtype=bool)[None, :, None, :, None] & val[:, None, None, :, :]
    own_BxCZxCZ = jnp.broadcast_to(own, (b, c, z, c, z)).reshape(b, c * z, c * z)
    flat = lambda x: x.reshape(b, c * z, *x.shape[3:])
    o = attend(flat(q), jnp.concatenate([kc_BxSxGxK, flat(k)], axis=1),
               jnp.concatenate([vc_BxSxGxK, flat(v)], axis=1),
               jnp.concatenate([pm_BxCZxS, own_BxCZxCZ], axis=2))
    return o.reshape(b, c, z, *o.shape[2:])

  return map_chunks(body, chunk, q_BxMxZxHxK, k_BxMxZxGxK, v_BxMxZxGxK, valid_BxMxZ,
                     start_BxM, doc_BxM)


# ------------------------------------------------------------------------------------------------
# The BLT-D plan.


@dataclasses.dataclass(frozen=True)
class AttnPlan:
  """Exact attention layouts; `None` = dense / unchunked. Derived from static shapes."""

  clean_segment: int | None = None  # Q for the clean stream's segment form
  clean_chunk: int | None = None  # segments per lax.map step
  block_chunk: int | None = None  # blocks per lax.map step
  block_prefix: str = "gather"  # "gather" (W rows per block) | "dense" (all S keys, masked)


def make_plan(cfg: BLTConfig, seq_len: int, num_blocks: int, clean_segment: int | str | None =
              "auto", block_chunk: int | str | None = "auto", block_prefix: str = "auto",
              budget: int = CHUNK_BUDGET_BYTES) -> AttnPlan:
  """Picks the layouts from static shapes; every choice gives the same values.

  clean: `local_plan` of the decoder (both local stacks use it on the clean stream).
  blocks: "dense" prefix keys while S <= 2W_b (W_b = diffusion.block_prefix_window; scores M·Z·S,
  no gather), else "gather" (scores M·Z·(W_b+Z) plus W_b gathered rows per block). Chunk sizes
  keep one layer's transient attention buffers under `budget` bytes per row.
  """
  d = cfg.decoder
  bwin = cfg.diffusion.block_prefix_window
  s = seq_len
  clean = local_plan(d, s, clean_segment, budget)
  mode = block_prefix
  if mode == "auto":
    mode = "dense" if bwin is None or s <= 2 * bwin else "gather"
  z = cfg.diffusion.block_size
  chunk = block_chunk
  if chunk == "auto":
    if mode == "dense":  # C·Z <= S keeps the block-diagonal part no larger than the prefix
      chunk = min(max(1, s // max(z, 1)), max(1, budget // (12 * d.n_heads * z * 2 * s)))
    else:
      w = min(s if bwin is None else bwin, s)
      chunk = max(1, budget // (12 * d.n_heads * z * (w + z) + 8 * w * d.kv_heads * d.head_dim))
    chunk = None if chunk >= num_blocks else chunk
  return AttnPlan(clean.segment, clean.chunk, chunk, mode)


__all__ = ["CHUNK_BUDGET_BYTES", "CAUSAL_BLOCK", "map_chunks", "local_attend", "causal_attend",
           "LocalPattern", "LocalPlan", "causal_block", "local_plan", "self_attention",
           "pool_is_segmented", "patch_mask", "PatchRuns", "max_pool", "patch_attend",
           "block_attend", "block_prefix_attend", "block_dense_prefix_attend", "AttnPlan",
           "make_plan"]
