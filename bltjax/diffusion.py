"""BLT-D: block-diffusion training of the BLT local decoder (fast_blt.md §2–3).

One decoder pass serves two streams that share every weight:

  clean stream  S positions, the encoder byte states, ordinary local causal attention and the
                BLT latent rule. It never reads the block stream, so it *is* plain BLT (causal
                mode, likelihoods, BLT-DV verification).
  block stream  M blocks of Z bytes. Block m is patch p = m + 1: bytes x[s_p : s_p + Z] at
                RoPE positions s_p + k, corrupted with [MASK] (id 260) at rate t, read latent
                o_{p-1} = o_m, attend bidirectionally within the block and causally to the clean
                stream's keys in [s_p - W, s_p) of the same document. Each block byte predicts
                its own byte.

Loss (§3.6): L = (Σ clean NLL + Σ_rows (1/t) Σ masked NLL) / #clean targets ("clean_tokens"),
or the per-stream means ("per_stream_mean").

Attention without an (S + M·Z)² mask (§3.7). Per decoder layer:
  * clean: local causal attention over S, either dense [S, S] (short rows) or the *segment*
    formulation: segments of Q queries attend the keys of their own and the ceil((W-1)/Q)
    previous segments, [S/Q, Q, (n_W + 1)·Q] scores per head, exact.
  * blocks ("gather", long rows): each block gathers the clean K/V rows [s_p - W, s_p) and
    appends its own Z rows: [M, Z, W + Z] scores per head, exact. With `block_chunk`, blocks run
    in chunks of Mc under `lax.map` + `jax.checkpoint`, so the gathered K/V ([Mc, W, 2, G, K])
    and the scores exist for one chunk at a time, forward and backward.
  * blocks ("dense" prefix, rows of S <= 2W): a chunk of C blocks attends all S clean keys plus
    its C·Z block keys under the mask, [C·Z, S + C·Z] scores: no gather, whose traffic is W/Z
    times the block stream.
  * cross-attention: block m reads the C keys of o_m directly (no per-byte gather).

Activation memory per row (bytes; b = activation bytes, 2 for bf16; D = local width, F = local
FFN width, N = S + M·Z decoder positions, V = 260):

  remat "none":  A ≈ b·[ L_D·N·(a·D + 3·F) + L_E·S·(a·D + 3·F) + T·S·D          (local stacks)
                        + L_G·P·(a·D_g + 3·F_g) ] + 8·L_G·H_G·P²                (global, dense)
                  + 8·N·V                                                         (fp32 logits)
                  + X                                                             (attention)
  remat "full":  A ≈ b·[ L_D·N·D + L_E·S·D + L_G·P·D_g ] + (one layer's "none" terms) + 8·N·V + X

with a ≈ 12 (norm inputs, q/k/v/o, cross-attention q/o, residuals) and T the hash tables.
Attention X is transient, not per layer: dense clean attention costs 12·H·S² for one layer
(8k bytes, 16 heads: 12.9 GB), the segment form 12·H·S·(n_W + 1)·Q per segment chunk, the
blocks 12·H·Mc·Z·(W + Z) + 2·b·Mc·W·G·K per block chunk; `activation_bytes` evaluates the formula
and README "BLT-D" lists XLA's measured peaks. The block stream is why BLT-D costs more than BLT:
N/S = 1 + Z·M/S ≈ 1 + Z/n_p (5 at n_p = 4, Z = 16).

Public API:
  build_blocks, sample_t, corrupt_blocks                    §3.1 / §3.2
  local_attend, block_attend, block_prefix_attend,
  block_dense_prefix_attend, make_plan                      attention kernels (§3.5, §3.7)
  bltd_forward, bltd_loss                                   training (§3.8)
  decode_blocks                                             inference reuse (BLT-D / BLT-DV)
  dense_reference_mask, activation_bytes                    tests and docs

Longer than 600 lines: the BLT-D objective and its memory-efficient kernels; the kernels move to
the shared kernel module planned in docs/ (one set for BLT and BLT-D training).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from bltjax import model, patching
from bltjax.config import BOS_ID, EOS_ID, MASK_ID, OFFSET, BLTConfig
from bltjax.layers import attend, dtype_of, local_mask

Params = dict[str, Any]
Metrics = dict[str, jnp.ndarray]

# Transient attention buffers (scores, probabilities, gathered K/V) per row per chunk: chunking
# starts when one layer's attention would need more than this.
CHUNK_BUDGET_BYTES = 256 * 2**20


# ------------------------------------------------------------------------------------------------
# §3.1 Blocks.


def build_blocks(ids_BxS: jnp.ndarray, valid_BxS: jnp.ndarray, doc_BxS: jnp.ndarray,
                 start_BxS1: jnp.ndarray, block_size: int, max_blocks: int) -> dict[str, Any]:
  """One block of Z bytes at every patch start after the first (static M = max_blocks).

  Block m belongs to patch p = m + 1 and starts at s_p (>= 1, < row length: the next-slot patch
  has no bytes). Slot k holds x[s_p + k] when that byte is valid and in the block's document
  (bytes after an EOS, past the row end or in padding are pad). Patches past M + 1 are dropped and
  counted.

  Returns dict with
    start_BxM     int32 s_p; S for absent blocks
    exists_BxM    bool
    doc_BxM       int32 document of s_p
    ids_BxMxZ     int32 clean ids, 0 in pad slots
    pos_BxMxZ     int32 RoPE positions s_p + k
    valid_BxMxZ   bool  slot holds a real byte (attended)
    target_BxMxZ  bool  slot may be masked and scored (valid and not a BOS)
    dropped_B     int32 blocks that did not fit in M
  """
  b, s = ids_BxS.shape
  z, m = block_size, max_blocks
  t_1xS = jnp.arange(s, dtype=jnp.int32)[None, :]
  pid_BxS = patching.patch_ids_from_starts(start_BxS1)
  is_start_BxS = start_BxS1[:, :s] & valid_BxS & (t_1xS >= 1) & (pid_BxS >= 1)
  slot_BxS = jnp.where(is_start_BxS, pid_BxS - 1, m)  # m: out of range, dropped by the scatter
  rows_BxS = jnp.broadcast_to(jnp.arange(b, dtype=jnp.int32)[:, None], (b, s))
  start_BxM = jnp.full((b, m), s, jnp.int32).at[rows_BxS, slot_BxS].min(
    jnp.broadcast_to(t_1xS, (b, s)), mode="drop")
  dropped_B = jnp.sum(is_start_BxS & (pid_BxS - 1 >= m), axis=1).astype(jnp.int32)
  exists_BxM = start_BxM < s

  pos_BxMxZ = start_BxM[:, :, None] + jnp.arange(z, dtype=jnp.int32)[None, None, :]
  idx_BxMZ = jnp.minimum(pos_BxMxZ, s - 1).reshape(b, m * z)
  take = lambda a: jnp.take_along_axis(a, idx_BxMZ, axis=1).reshape(b, m, z)
  doc_BxM = jnp.take_along_axis(doc_BxS, jnp.minimum(start_BxM, s - 1), axis=1)
  valid_BxMxZ = (exists_BxM[:, :, None] & (pos_BxMxZ < s) & take(valid_BxS)
                 & (take(doc_BxS) == doc_BxM[:, :, None]))
  ids_BxMxZ = jnp.where(valid_BxMxZ, take(ids_BxS), 0)
  return dict(start_BxM=start_BxM, exists_BxM=exists_BxM, doc_BxM=doc_BxM, ids_BxMxZ=ids_BxMxZ,
              pos_BxMxZ=pos_BxMxZ, valid_BxMxZ=valid_BxMxZ,
              target_BxMxZ=valid_BxMxZ & (ids_BxMxZ != BOS_ID), dropped_B=dropped_B)


# ------------------------------------------------------------------------------------------------
# §3.2 Noise.


def sample_t(rng: jax.Array, batch: int, t_min: float, stratified: bool = False) -> jnp.ndarray:
  """One t ~ U[t_min, 1] per row; `stratified` spaces the B values evenly with a random offset."""
  if stratified:
    u = (jnp.arange(batch, dtype=jnp.float32) + jax.random.uniform(rng, ())) / batch
  else:
    u = jax.random.uniform(rng, (batch,), jnp.float32)
  return t_min + (1.0 - t_min) * u


def corrupt_blocks(rng: jax.Array, ids_BxMxZ: jnp.ndarray, target_BxMxZ: jnp.ndarray,
                   t_B: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Each maskable slot becomes MASK with probability t of its row: (noisy ids, mask)."""
  u = jax.random.uniform(rng, ids_BxMxZ.shape, jnp.float32)
  mask_BxMxZ = target_BxMxZ & (u < t_B[:, None, None])
  return jnp.where(mask_BxMxZ, MASK_ID, ids_BxMxZ), mask_BxMxZ


# ------------------------------------------------------------------------------------------------
# Attention kernels (§3.5, §3.7). All exact: masked keys get probability 0, as in `attend`.


def _map_chunks(fn: Callable[..., Any], chunk: int | None, *xs: jnp.ndarray):
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


def _fold(x):
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
    m = local_mask(_fold(qpos), _fold(kpos_), _fold(qdoc), _fold(kdoc_), _fold(kval), window)
    o = attend(_fold(q_), _fold(k_), _fold(v_), m)
    return o.reshape(bb, c, *o.shape[1:])

  o = _map_chunks(body, seg_chunk, seg(q), ks, vs, seg(pos), seg(doc), kpos, kdoc, kvalid)
  return o.reshape(b, sp, *o.shape[3:])[:, :s]


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
  o = attend(_fold(q_BxMxZxHxK), _fold(keys), _fold(vals), _fold(mask_BxMxZxTZ))
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

  return _map_chunks(body, chunk, q_BxMxZxHxK, k_BxMxZxGxK, v_BxMxZxGxK, valid_BxMxZ,
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

  return _map_chunks(body, chunk, q_BxMxZxHxK, k_BxMxZxGxK, v_BxMxZxGxK, valid_BxMxZ,
                     start_BxM, doc_BxM)


# ------------------------------------------------------------------------------------------------
# Static attention plan.


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

  clean: segments once dense [S, S] attention would waste > 2x (S > 2W, W the decoder window).
  blocks: "dense" prefix keys while S <= 2W_b (W_b = diffusion.block_prefix_window; scores M·Z·S,
  no gather), else "gather" (scores M·Z·(W_b+Z) plus W_b gathered rows per block). Chunk sizes
  keep one layer's transient attention buffers under `budget` bytes per row.
  """
  d = cfg.decoder
  win = d.window
  bwin = cfg.diffusion.block_prefix_window
  s = seq_len
  seg = clean_segment
  if seg == "auto":
    seg = None if win is None or s <= 2 * win else min(win, 256)
  seg_chunk = None
  if seg is not None:
    n_prev = -(-(win - 1) // seg)
    per_seg = 12 * d.n_heads * seg * (n_prev + 1) * seg + 8 * (n_prev + 1) * seg * d.dim
    seg_chunk = max(1, budget // per_seg)
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
  return AttnPlan(seg, seg_chunk, chunk, mode)


# ------------------------------------------------------------------------------------------------
# Model pieces as pure functions over parameter sub-trees (so jax.checkpoint can wrap them).


def _apply(cfg: BLTConfig, params: Params, fn: Callable[..., Any], *args):
  return model.blt_module(cfg).apply({"params": params}, *args, method=lambda m, *a: fn(m, *a))


def _remat(cfg: BLTConfig, fn: Callable[..., Any]) -> Callable[..., Any]:
  if cfg.remat == "none":
    return fn
  policy = None
  if cfg.remat == "dots":
    policy = jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims
  return jax.checkpoint(fn, policy=policy)


def _sub(params: Params, stack: str, names: tuple[str, ...]) -> Params:
  """Only the layer's own weights enter a rematerialised layer (no zero cotangents elsewhere)."""
  tree = params[stack]
  if all(n in tree for n in names):
    return {stack: {n: tree[n] for n in names}}
  return {stack: tree}


def _block_cross(cfg: BLTConfig, dec, i: int, hb_BxMxZxD, kv_i, lat_BxM):
  """Decoder cross-attention for blocks: block m reads the C keys of latent lat[m] only.

  Same math as `LocalDecoder.cross` with one latent per block instead of a per-byte gather.
  """
  xa = dec.cross_attn_layers[i]
  b, m, z, d = hb_BxMxZxD.shape
  take = jax.vmap(lambda a, idx: a[idx])
  k_BxMxCxHxK, v_BxMxCxHxK = take(kv_i[0], lat_BxM), take(kv_i[1], lat_BxM)
  q = xa.query(hb_BxMxZxD.reshape(b, m * z, d)).reshape(b, m, z, *k_BxMxCxHxK.shape[3:])
  sc = jnp.einsum("bmzhk,bmchk->bmzhc", q, k_BxMxCxHxK,
                  preferred_element_type=jnp.float32) / math.sqrt(q.shape[-1])
  p = jax.nn.softmax(sc, axis=-1).astype(v_BxMxCxHxK.dtype)
  o = jnp.einsum("bmzhc,bmchk->bmzhk", p, v_BxMxCxHxK)
  x = hb_BxMxZxD.reshape(b, m * z, d)
  return xa.output(x, o.reshape(b, m * z, *o.shape[3:])).reshape(b, m, z, d)


def _layer(cfg: BLTConfig, stack: str, i: int, plan: AttnPlan):
  """One encoder/decoder layer over both streams: (clean h, block h or None) -> same + clean kv.

  The clean half never reads block arrays, so with hb=None it is exactly the BLT layer.
  """
  tc = cfg.decoder if stack == "local_decoder" else cfg.encoder

  def run(m, hc, hb, c, bl, kv_i):
    mod = getattr(m, stack)
    blk = mod.layers[i]
    if stack == "local_decoder":
      hc = mod.cross(i, hc, kv_i, c["lat_BxS"])
    q, k, v = blk.attn_in(hc, c["pos_BxS"])
    o = local_attend(q, k, v, c["pos_BxS"], c["doc_BxS"], c["valid_BxS"], tc.window,
                     plan.clean_segment, plan.clean_chunk)
    hc = blk.attn_out(hc, o)
    if hb is None:
      return hc, None
    b, nm, z, d = hb.shape
    if stack == "local_decoder":
      hb = _block_cross(cfg, mod, i, hb, kv_i, bl["lat_BxM"])
    flat = hb.reshape(b, nm * z, d)
    qb, kb, vb = blk.attn_in(flat, bl["pos_BxMxZ"].reshape(b, nm * z))
    unflat = lambda x: x.reshape(b, nm, z, *x.shape[2:])
    kern = block_dense_prefix_attend if plan.block_prefix == "dense" else block_prefix_attend
    ob = kern(unflat(qb), unflat(kb), unflat(vb), bl["valid_BxMxZ"], bl["start_BxM"],
              bl["doc_BxM"], k, v, c["valid_BxS"], c["doc_BxS"],
              cfg.diffusion.block_prefix_window, plan.block_chunk)
    hb = blk.attn_out(flat, ob.reshape(b, nm * z, *ob.shape[3:])).reshape(b, nm, z, d)
    return hc, hb

  names = (f"layers_{i}",) + ((f"cross_attn_layers_{i}",) if stack == "local_decoder" else ())

  def fn(params, hc, hb, c, bl, kv_i):
    return _apply(cfg, _sub(params, stack, names), run, hc, hb, c, bl, kv_i)

  return _remat(cfg, fn)


def _pool(cfg: BLTConfig, enc, h_BxSxD, patch_ids_BxS, valid_BxS, num_patches: int):
  """`LocalEncoder.pool` with its cross-attention as a per-patch segment softmax.

  Same math (max-pool init, projection to C queries, queries of patch p attend only the bytes of
  patch p, double residual), but O(S·C·D) memory instead of dense [P·C, S] scores per head
  (2 GiB per array at 8k bytes and 16 heads).
  """
  b, s, d = h_BxSxD.shape
  p, c = num_patches, cfg.cross_attn_k
  seg_BxS = jnp.where(valid_BxS, patch_ids_BxS, p)  # pads go to a dropped segment
  by_patch = lambda x, op: jax.vmap(lambda xx, i: op(xx, i, num_segments=p + 1))(x, seg_BxS)
  count_BxP1 = jax.vmap(lambda i: jnp.bincount(i, length=p + 1))(seg_BxS)
  pooled = by_patch(h_BxSxD, jax.ops.segment_max)[:, :p]
  pooled = jnp.where(count_BxP1[:, :p, None] > 0, pooled, 0).astype(h_BxSxD.dtype)  # empty: 0
  q_BxQxD = enc.patch_embedding_projection(pooled).reshape(b, p * c, d)
  xa = enc.cross_attn_layers[0]
  k_BxSxHxK, v_BxSxHxK = xa.kv(h_BxSxD)
  q_BxPxCxHxK = xa.query(q_BxQxD).reshape(b, p, c, *k_BxSxHxK.shape[2:])
  q_BxSxCxHxK = jnp.take_along_axis(
    q_BxPxCxHxK, jnp.minimum(seg_BxS, p - 1)[:, :, None, None, None], axis=1)
  sc = jnp.einsum("bschk,bshk->bsch", q_BxSxCxHxK, k_BxSxHxK,
                  preferred_element_type=jnp.float32) / math.sqrt(k_BxSxHxK.shape[-1])
  vmask = valid_BxS[:, :, None, None]
  mx = jax.lax.stop_gradient(jnp.take_along_axis(  # softmax shift: no gradient by invariance
    by_patch(jnp.where(vmask, sc, -jnp.inf), jax.ops.segment_max), seg_BxS[:, :, None, None],
    axis=1))
  e = jnp.where(vmask, jnp.exp(sc - jnp.where(vmask, mx, 0.0)), 0.0)
  den = jnp.take_along_axis(by_patch(e, jax.ops.segment_sum), seg_BxS[:, :, None, None], axis=1)
  prob = (e / jnp.where(den > 0, den, 1.0)).astype(v_BxSxHxK.dtype)  # like `attend`
  pv = prob[..., None].astype(jnp.float32) * v_BxSxHxK[:, :, None].astype(jnp.float32)
  o_BxPxCxHxK = by_patch(pv, jax.ops.segment_sum)[:, :p].astype(v_BxSxHxK.dtype)
  out = xa.output(q_BxQxD, o_BxPxCxHxK.reshape(b, p * c, *o_BxPxCxHxK.shape[3:]))
  return out.reshape(b, p, c * d)


def _embed_blocks(cfg: BLTConfig, params: Params, noisy_BxMxZ, bl, ids_BxS, valid_BxS):
  """Block-stream decoder inputs before the encoder layers.

  "tok_embeddings": the byte table (MASK row included), no hash n-grams.
  "encoder_states": the full encoder embedding; hash n-grams read the clean bytes before the
  block (BOE 0 before position 0), like the clean stream's hashes at the same positions.
  """
  b, m, z = noisy_BxMxZ.shape
  ids = jnp.where(bl["valid_BxMxZ"], noisy_BxMxZ, 0)
  if cfg.diffusion.block_input == "tok_embeddings":
    return _apply(cfg, {"local_encoder": {"tok_embeddings": params["local_encoder"][
      "tok_embeddings"]}}, lambda mm, x: mm.local_encoder.tok_embeddings(x), ids)
  g = max(cfg.hash.group_sizes) - 1 if cfg.hash.num_tables else 0
  s = ids_BxS.shape[1]
  j_BxMxG = bl["start_BxM"][:, :, None] - g + jnp.arange(g, dtype=jnp.int32)[None, None, :]
  jc = jnp.clip(j_BxMxG, 0, s - 1).reshape(b, m * g)
  ctx_ok = (j_BxMxG >= 0) & jnp.take_along_axis(valid_BxS, jc, axis=1).reshape(b, m, g)
  ctx_ids = jnp.where(ctx_ok, jnp.take_along_axis(ids_BxS, jc, axis=1).reshape(b, m, g), 0)
  all_ids = jnp.concatenate([ctx_ids, ids], axis=2).reshape(b * m, g + z)
  all_pos = jnp.concatenate([j_BxMxG, bl["pos_BxMxZ"]], axis=2).reshape(b * m, g + z)
  all_valid = jnp.concatenate([ctx_ok, bl["valid_BxMxZ"]], axis=2).reshape(b * m, g + z)
  e = _apply(cfg, {"local_encoder": params["local_encoder"]},
             lambda mm, *a: mm.local_encoder.embed(*a), all_ids, jnp.maximum(all_pos, 0),
             all_valid)
  return e.reshape(b, m, g + z, -1)[:, :, g:]


# ------------------------------------------------------------------------------------------------
# Forward.


def truncate_to_patches(start_BxS1: jnp.ndarray, valid_BxS: jnp.ndarray, max_patches: int
                        ) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Cuts each row at the start of patch `max_patches` (the BLT patch budget, blt.md §9).

  Same rule as plain BLT training: bytes from the cut on are neither attended nor scored, and
  the cut slot stays a start (it becomes the next-token slot).
  """
  count_BxS1 = jnp.cumsum(start_BxS1.astype(jnp.int32), axis=-1)
  over_BxS1 = start_BxS1 & (count_BxS1 > max_patches)
  s1 = start_BxS1.shape[1]
  cut_B = jnp.where(jnp.any(over_BxS1, axis=-1), jnp.argmax(over_BxS1, axis=-1), s1)
  len_B = jnp.minimum(jnp.sum(valid_BxS, axis=-1), cut_B)
  t_1xS1 = jnp.arange(s1, dtype=jnp.int32)[None, :]
  return start_BxS1 & (t_1xS1 <= len_B[:, None]), valid_BxS & (t_1xS1[:, :-1] < len_B[:, None])


def _patch_count(cfg: BLTConfig, seq_len: int, max_patches: int | None) -> tuple[int, int]:
  """(P global patch slots, M block slots); M <= P - 1 so block m's patch m + 1 has a latent."""
  mb = cfg.diffusion.max_blocks
  p = max_patches or (mb + 1 if mb else seq_len + 1)
  m = min(mb or p - 1, p - 1)
  return p, max(m, 1)


def bltd_forward(params: Params, cfg: BLTConfig, batch: dict[str, jnp.ndarray], rng: jax.Array,
                 *, max_patches: int | None = None, t: float | jnp.ndarray | None = None,
                 with_blocks: bool = True, clean_segment: int | str | None = "auto",
                 block_chunk: int | str | None = "auto", block_prefix: str = "auto"
                 ) -> dict[str, Any]:
  """Both streams' logits for a batch (§3.8 steps 2–7).

  Args:
    params: keys local_encoder, global_transformer, local_decoder (others ignored).
    cfg: a BLT-D config (`cfg.diffusion.block_size` = Z > 0).
    batch: ids [B,S] int32, valid [B,S] bool, doc_ids [B,S] int32, start [B,S+1] bool.
    rng: key for t and the mask.
    max_patches: static global patch slots P (default: diffusion.max_blocks + 1, else S + 1).
    t: fixed noise level (scalar or [B]) instead of sampling, e.g. 0.5 for evaluation.
    with_blocks: False runs the clean stream only (plain BLT; the "no block branch" check).
    clean_segment, block_chunk, block_prefix: attention layout (`make_plan`); exact for every
      value.

  Returns dict with clean_logits_BxSxV, block_logits_BxMxZxV (None without blocks), blocks
  (`build_blocks` dict), noisy_BxMxZ, mask_BxMxZ, t_B, and valid_BxS / start_BxS1 after the cut
  at the patch budget.
  """
  ids, valid = jnp.asarray(batch["ids"], jnp.int32), jnp.asarray(batch["valid"], bool)
  doc, start = jnp.asarray(batch["doc_ids"], jnp.int32), jnp.asarray(batch["start"], bool)
  b, s = ids.shape
  z = cfg.diffusion.block_size
  p, nm = _patch_count(cfg, s, max_patches)
  start, valid = truncate_to_patches(start, valid, p)
  ids = jnp.where(valid, ids, 0)
  plan = make_plan(cfg, s, nm, clean_segment, block_chunk, block_prefix)
  pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32)[None, :], (b, s))
  a = model.byte_arrays(start, ids, valid, p)
  dt = dtype_of(cfg.dtype)

  bl = noisy = mask = t_B = hb = None
  if with_blocks:
    if z <= 0:
      raise ValueError("bltd_forward: cfg.diffusion.block_size must be > 0 for the block branch")
    bl = build_blocks(ids, valid, doc, start, z, nm)
    if batch.get("score") is not None:  # evaluation windows: context bytes are not scored
      score = jnp.asarray(batch["score"], bool)
      bl["target_BxMxZ"] &= jnp.take_along_axis(
        score, jnp.minimum(bl["pos_BxMxZ"], s - 1).reshape(b, nm * z), axis=1).reshape(b, nm, z)
    bl["lat_BxM"] = jnp.broadcast_to(jnp.arange(nm, dtype=jnp.int32)[None, :], (b, nm))
    r_t, r_mask = jax.random.split(rng)
    if t is None:
      t_B = sample_t(r_t, b, cfg.diffusion.t_min, cfg.diffusion.stratified_t)
    else:
      t_B = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (b,))
    noisy, mask = corrupt_blocks(r_mask, bl["ids_BxMxZ"], bl["target_BxMxZ"], t_B)
    hb = _embed_blocks(cfg, params, noisy, bl, ids, valid)
    if cfg.diffusion.block_input == "tok_embeddings":
      hb_dec, hb = hb, None  # no encoder layers on the block stream

  # Local encoder on the clean bytes (and the blocks for block_input="encoder_states").
  c = dict(pos_BxS=pos, doc_BxS=doc, valid_BxS=valid, lat_BxS=a["dec_ids"])
  x = _apply(cfg, {"local_encoder": params["local_encoder"]},
             lambda mm, *r: mm.local_encoder.embed(*r), ids, pos, valid)
  for i in range(cfg.encoder.n_layers):
    x, hb = _layer(cfg, "local_encoder", i, plan)(params, x, hb, c, bl, None)
  if with_blocks and cfg.diffusion.block_input == "encoder_states":
    hb_dec = hb
  enc_sub = {k: v for k, v in params["local_encoder"].items() if k != "hash_embeddings"}
  x_g = _apply(cfg, {"local_encoder": enc_sub},
               lambda mm, *r: _pool(cfg, mm.local_encoder, *r), x, a["patch_ids"], valid, p)
  o = model.global_latents(params, cfg, x_g, a["patch_pos"], a["patch_doc"], a["patch_valid"])
  kvs = _apply(cfg, {"local_decoder": params["local_decoder"]},
               lambda mm, oo: mm.local_decoder.latent_kv(oo), o)

  # Local decoder: both streams layer by layer; blocks read the clean K/V of the same layer.
  hc = x.astype(dt)
  hb = hb_dec.astype(dt) if with_blocks else None
  for i in range(cfg.decoder.n_layers):
    hc, hb = _layer(cfg, "local_decoder", i, plan)(params, hc, hb, c, bl, kvs[i])
  head = lambda h: _apply(cfg, {"local_decoder": params["local_decoder"]},
                          lambda mm, hh: mm.local_decoder.head(hh), h)
  clean_logits = head(hc)
  block_logits = None
  if with_blocks:
    block_logits = head(hb.reshape(b, nm * z, -1)).reshape(b, nm, z, -1)
  return dict(clean_logits_BxSxV=clean_logits, block_logits_BxMxZxV=block_logits, blocks=bl,
              noisy_BxMxZ=noisy, mask_BxMxZ=mask, t_B=t_B, valid_BxS=valid, start_BxS1=start)


# ------------------------------------------------------------------------------------------------
# §3.6 Loss.


def _nll(logits_NxV: jnp.ndarray, tgt_N: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  logp = jax.nn.log_softmax(logits_NxV.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tgt_N[..., None], axis=-1)[..., 0]
  return nll, jnp.argmax(logits_NxV, axis=-1) == tgt_N


def clean_targets(ids_BxS: jnp.ndarray, valid_BxS: jnp.ndarray,
                  score_BxS: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(target ids, scored) of the next-byte loss: position t predicts a valid, non-BOS ids[t+1]."""
  tgt = jnp.concatenate([ids_BxS[:, 1:], jnp.zeros_like(ids_BxS[:, :1])], axis=1)
  ok = valid_BxS if score_BxS is None else valid_BxS & score_BxS
  tv = jnp.concatenate([ok[:, 1:], jnp.zeros_like(ok[:, :1])], axis=1)
  return tgt, tv & (tgt != BOS_ID)


def loss_from_outputs(cfg: BLTConfig, batch: dict[str, jnp.ndarray],
                      out: dict[str, Any]) -> tuple[jnp.ndarray, Metrics]:
  """L_clean + L_mask normalised by `cfg.diffusion.loss_norm`, and the metrics (`bltd_loss`)."""
  valid = out["valid_BxS"]  # after the patch-budget cut
  ids = jnp.where(valid, jnp.asarray(batch["ids"], jnp.int32), 0)
  score = batch.get("score")
  score = None if score is None else jnp.asarray(score, bool)
  tgt, tv = clean_targets(ids, valid, score)
  nll_c, hit_c = _nll(out["clean_logits_BxSxV"], tgt)
  tbyte, teos = tv & (tgt >= OFFSET), tv & (tgt == EOS_ID)
  n_clean = jnp.sum(tv).astype(jnp.float32)
  sum_c = jnp.sum(jnp.where(tv, nll_c, 0.0))

  bl, mask, t_B = out["blocks"], out["mask_BxMxZ"], out["t_B"]
  nll_b, hit_b = _nll(out["block_logits_BxMxZxV"], bl["ids_BxMxZ"])
  masked_nll = jnp.sum(jnp.where(mask, nll_b, 0.0))
  sum_m = jnp.sum(jnp.where(mask, nll_b, 0.0) / t_B[:, None, None])  # 1/t once, per row
  n_mask = jnp.sum(mask).astype(jnp.float32)
  n_target = jnp.sum(bl["target_BxMxZ"]).astype(jnp.float32)
  den = lambda n: jnp.maximum(n, 1.0)
  if cfg.diffusion.loss_norm == "clean_tokens":
    loss = (sum_c + sum_m) / den(n_clean)
  else:  # per_stream_mean: E[#masked] = t·#targets, so sum_m / #targets is a per-byte mean
    loss = sum_c / den(n_clean) + sum_m / den(n_target)
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  s = ids.shape[1]
  t_1xS1 = jnp.arange(s + 1, dtype=jnp.int32)[None, :]
  metrics = dict(
    # The losses.py contract: `weight` = loss denominator, n_* / *_sum add up, the rest are means.
    weight=n_clean,
    nll_bytes_sum=jnp.sum(jnp.where(tbyte, nll_c, 0.0)),
    n_bytes=f32(jnp.sum(tbyte)),
    nll_eos_sum=jnp.sum(jnp.where(teos, nll_c, 0.0)),
    n_eos=f32(jnp.sum(teos)),
    n_tokens=f32(jnp.sum(jnp.asarray(batch["valid"], bool))),
    n_truncated=f32(jnp.sum(jnp.asarray(batch["valid"], bool)) - jnp.sum(valid)),
    n_patches=f32(jnp.sum(out["start_BxS1"] & (t_1xS1 < jnp.sum(valid, axis=1)[:, None]))),
    accuracy=jnp.sum(tv & hit_c) / den(n_clean),
    clean_loss=sum_c / den(n_clean),
    bpb=jnp.sum(jnp.where(tbyte, nll_c, 0.0)) / den(f32(jnp.sum(tbyte))) / math.log(2.0),
    masked_loss=masked_nll / den(n_mask),
    masked_acc=jnp.sum(mask & hit_b) / den(n_mask),
    masked_nll_sum=masked_nll,
    masked_weighted_nll_sum=sum_m,
    n_masked=n_mask,
    n_masked_correct=f32(jnp.sum(mask & hit_b)),
    n_block_targets=n_target,
    n_blocks=f32(jnp.sum(bl["exists_BxM"])),
    n_dropped_blocks=f32(jnp.sum(bl["dropped_B"])),
    t_mean=jnp.mean(t_B),
  )
  return loss, metrics


def bltd_loss(params: Params, cfg: BLTConfig, batch: dict[str, jnp.ndarray], rng: jax.Array,
              *, max_patches: int | None = None, t: float | jnp.ndarray | None = None,
              clean_segment: int | str | None = "auto", block_chunk: int | str | None = "auto",
              block_prefix: str = "auto") -> tuple[jnp.ndarray, Metrics]:
  """BLT-D training loss (fast_blt.md §3.8) and metrics, under the `losses.py` contract.

  batch: ids int32 [B,S] (BOS 1, bytes + 4, EOS 2, pad 0), valid bool [B,S], doc_ids int32
  [B,S], start bool [B,S+1] patch starts, optional score bool [B,S] (only targets at scored
  positions count, clean and block). `max_patches` is the trainer's static patch budget P: rows
  are cut at the start of patch P as in plain BLT, so the causal path sees exactly BLT's inputs.

  Metrics: weight (#clean targets), nll_bytes_sum / n_bytes / nll_eos_sum / n_eos (causal-path
  bpb, as BLT), n_tokens, n_truncated, n_patches, accuracy, clean_loss, bpb, masked_loss (nats
  per masked byte, unweighted), masked_acc, masked_nll_sum, masked_weighted_nll_sum (the 1/t
  sum), n_masked, n_masked_correct, n_block_targets, n_blocks, n_dropped_blocks, t_mean.
  """
  out = bltd_forward(params, cfg, batch, rng, max_patches=max_patches, t=t,
                     clean_segment=clean_segment, block_chunk=block_chunk,
                     block_prefix=block_prefix)
  return loss_from_outputs(cfg, batch, out)


# ------------------------------------------------------------------------------------------------
# Inference reuse: blocks against a clean-prefix K/V cache.


def decode_blocks(params: Params, cfg: BLTConfig, block_ids_BxMxZ: jnp.ndarray,
                  block_pos_BxMxZ: jnp.ndarray, block_valid_BxMxZ: jnp.ndarray,
                  block_start_BxM: jnp.ndarray, latent_BxMxDg: jnp.ndarray,
                  prefix_kv: list[tuple[jnp.ndarray, jnp.ndarray]], prefix_pos_BxT: jnp.ndarray,
                  prefix_valid_BxT: jnp.ndarray, block_h_BxMxZxD: jnp.ndarray | None = None
                  ) -> jnp.ndarray:
  """Runs the local decoder over blocks only, against a given clean-prefix K/V: [B,M,Z,260].

  This is the BLT-D denoising step (§4.1 step 2) and the block half of training:
    block_ids      current block ids (MASK = 260 where undecided); embedded with the byte table
                   unless `block_h_BxMxZxD` gives the decoder inputs (block_input variants).
    block_pos      RoPE positions (s + k); block_valid: slots that exist (pad slots are ignored).
    block_start    s, the first block position: prefix key j is visible iff
                   s - W <= prefix_pos[j] < s and prefix_valid[j] (W =
                   diffusion.block_prefix_window, or all when None).
    latent         the latent each block cross-attends ([B,M,D_g], e.g. o_{p-1} or the §4.3
                   block latent).
    prefix_kv      per decoder layer (k, v), each [B,T,G,K], RoPE already applied: the decoder's
                   clean KV cache at that layer (any order, e.g. a ring buffer); prefix_valid
                   masks empty or other-document slots.
  Blocks never see each other. The prefix is not updated: callers append committed bytes to
  their cache through the clean (causal) path.
  """
  b, nm, z = block_ids_BxMxZ.shape
  w = cfg.diffusion.block_prefix_window
  dt = dtype_of(cfg.dtype)
  if block_h_BxMxZxD is None:
    ids = jnp.where(block_valid_BxMxZ, block_ids_BxMxZ, 0)
    block_h_BxMxZxD = _apply(cfg, {"local_encoder": params["local_encoder"]},
                             lambda mm, x: mm.local_encoder.tok_embeddings(x), ids)
  lat_BxM = jnp.broadcast_to(jnp.arange(nm, dtype=jnp.int32)[None, :], (b, nm))
  d = block_h_BxMxZxD.shape[-1]

  def run(m, hb, latent, kvp):
    dec = m.local_decoder
    kvs = dec.latent_kv(latent)
    t = prefix_pos_BxT.shape[1]
    rel = block_start_BxM[:, :, None] - prefix_pos_BxT[:, None, :]
    pmask = (rel >= 1) & prefix_valid_BxT[:, None, :]
    if w is not None:
      pmask &= rel <= w
    for i in range(len(dec.layers)):
      hb = _block_cross(cfg, dec, i, hb, kvs[i], lat_BxM)
      flat = hb.reshape(b, nm * z, d)
      qb, kb, vb = dec.layers[i].attn_in(flat, block_pos_BxMxZ.reshape(b, nm * z))
      unflat = lambda x: x.reshape(b, nm, z, *x.shape[2:])
      kp, vp = kvp[i]
      bc = lambda x: jnp.broadcast_to(x[:, None], (b, nm, t, *x.shape[2:]))
      ob = block_attend(unflat(qb), unflat(kb), unflat(vb), block_valid_BxMxZ, bc(kp), bc(vp),
                        pmask)
      hb = dec.layers[i].attn_out(flat, ob.reshape(b, nm * z, *ob.shape[3:])).reshape(b, nm, z, d)
    return dec.head(hb.reshape(b, nm * z, d)).reshape(b, nm, z, -1)

  return _apply(cfg, {"local_decoder": params["local_decoder"]}, run,
                block_h_BxMxZxD.astype(dt), latent_BxMxDg, prefix_kv)


def clean_decoder_kv(params: Params, cfg: BLTConfig, h_BxSxD: jnp.ndarray, pos_BxS: jnp.ndarray,
                     doc_BxS: jnp.ndarray, valid_BxS: jnp.ndarray, o_BxPxDg: jnp.ndarray,
                     lat_idx_BxS: jnp.ndarray) -> tuple[jnp.ndarray, list[Any]]:
  """Causal decoder pass returning (logits, per-layer (k, v)): a prefix K/V for `decode_blocks`."""
  c = dict(pos_BxS=pos_BxS, doc_BxS=doc_BxS, valid_BxS=valid_BxS, lat_BxS=lat_idx_BxS)

  def run(m, h, o):
    dec = m.local_decoder
    kvs = dec.latent_kv(o)
    out = []
    for i in range(len(dec.layers)):
      h = dec.cross(i, h, kvs[i], c["lat_BxS"])
      q, k, v = dec.layers[i].attn_in(h, pos_BxS)
      out.append((k, v))
      h = dec.layers[i].attn_out(h, local_attend(q, k, v, pos_BxS, doc_BxS, valid_BxS,
                                                 cfg.decoder.window))
    return dec.head(h), out

  return _apply(cfg, {"local_decoder": params["local_decoder"]}, run,
                h_BxSxD.astype(dtype_of(cfg.dtype)), o_BxPxDg)


# ------------------------------------------------------------------------------------------------
# Tests and docs.


def dense_reference_mask(pos_BxS, doc_BxS, valid_BxS, block_start_BxM, block_doc_BxM,
                         block_valid_BxMxZ, window: int | None,
                         block_window: int | None | str = "same") -> jnp.ndarray:
  """The §3.5 mask over the concatenation [clean S ; block 0 ; … ; block M-1]: [B, N, N].

  `window` is the clean stream's; `block_window` the blocks' prefix window ("same" = window).
  O(N²) memory: for tests and documentation only; training never builds it.
  """
  if block_window == "same":
    block_window = window
  b, s = pos_BxS.shape
  _, nm, z = block_valid_BxMxZ.shape
  cc = local_mask(pos_BxS, pos_BxS, doc_BxS, doc_BxS, valid_BxS, window)
  j = pos_BxS[:, None, :]
  bc = ((j < block_start_BxM[:, :, None]) & (doc_BxS[:, None, :] == block_doc_BxM[:, :, None])
        & valid_BxS[:, None, :])
  if block_window is not None:
    bc &= j >= block_start_BxM[:, :, None] - block_window
  bc_BxMZxS = jnp.broadcast_to(bc[:, :, None, :], (b, nm, z, s)).reshape(b, nm * z, s)
  same_block = jnp.eye(nm, dtype=bool)[None, :, None, :, None]
  bb = same_block & block_valid_BxMxZ[:, None, None, :, :]
  bb_BxMZxMZ = jnp.broadcast_to(bb, (b, nm, z, nm, z)).reshape(b, nm * z, nm * z)
  top = jnp.concatenate([cc, jnp.zeros((b, s, nm * z), bool)], axis=2)
  bottom = jnp.concatenate([bc_BxMZxS, bb_BxMZxMZ], axis=2)
  return jnp.concatenate([top, bottom], axis=1)


def activation_bytes(cfg: BLTConfig, seq_len: int, num_blocks: int, num_patches: int,
                     act_bytes: int = 2, plan: AttnPlan | None = None) -> dict[str, float]:
  """The module docstring's per-row activation-memory model, in bytes, per term.

  Calibrated against JAX's saved residuals (benchmarks/bltd_memory.py): per layer and position a
  stack keeps about 6·F·b (SwiGLU) + 5·D·b (q, k, v, o, residual) + 10·D·4 (fp32 internals of
  RMSNorm and cross-attention); the dense global attention keeps 3 fp32 score arrays, the bf16
  probabilities and the bool mask per layer. With remat only each layer's inputs stay, plus one
  layer's terms while it is recomputed in the backward pass. Within ~15% of the measured
  residuals (README "BLT-D").
  """
  e, g, d = cfg.encoder, cfg.global_, cfg.decoder
  z, b = cfg.diffusion.block_size, act_bytes
  s, m, p = seq_len, num_blocks, num_patches
  n = s + m * z
  per = lambda st: 6 * st.hidden_dim * b + (5 * b + 40) * st.dim
  glob_attn = g.n_heads * p * p * (12 + b + 1)
  local_layer = n * per(d)
  if cfg.remat == "none":
    local = d.n_layers * local_layer + e.n_layers * s * per(e)
    glob = g.n_layers * (p * per(g) + glob_attn)
  else:
    local = (d.n_layers * n + e.n_layers * s) * d.dim * b + local_layer
    glob = g.n_layers * p * g.dim * b + p * per(g) + glob_attn
  plan = plan or make_plan(cfg, s, m)
  w = s if d.window is None else d.window
  if plan.clean_segment is None:
    clean_attn = 12 * d.n_heads * s * s
  else:
    q = plan.clean_segment
    nseg = -(-s // q) if plan.clean_chunk is None else min(plan.clean_chunk, -(-s // q))
    clean_attn = 12 * d.n_heads * nseg * q * (-(-(w - 1) // q) + 1) * q
  mc = m if plan.block_chunk is None else plan.block_chunk
  if plan.block_prefix == "dense":
    block_attn = 12 * d.n_heads * mc * z * (s + mc * z) + 2 * b * (s + mc * z) * d.dim
  else:
    bw = cfg.diffusion.block_prefix_window
    w = min(s if bw is None else bw, s)
    block_attn = 12 * d.n_heads * mc * z * (w + z) + 2 * b * mc * w * d.dim
  out = dict(local=float(local), global_=float(glob), logits=8.0 * n * cfg.vocab_size,
             attention=float(max(clean_attn, block_attn)))
  out["total"] = sum(out.values())
  return out


__all__ = ["build_blocks", "sample_t", "corrupt_blocks", "local_attend", "block_attend",
           "block_prefix_attend", "block_dense_prefix_attend", "AttnPlan", "make_plan",
           "bltd_forward", "bltd_loss",
           "loss_from_outputs", "clean_targets", "decode_blocks", "clean_decoder_kv",
           "dense_reference_mask", "activation_bytes", "MASK_ID"]
