"""The decoding engine: one cached forward of the whole BLT over Q new positions per row.

`forward(params, cfg, state, ids, valid)` runs Q new ids per row (a right-padded prefix of
`valid` positions) through every stack against the caches: the entropy model, the local encoder,
patch starts (the patcher's incremental rule), pooling and one multi-query causal step of the
global model for every patch that closes among them (and, on request, for the open last patch),
and the local decoder with the exact latent rule (arXiv 2412.09871 §2-§4; docs/decoding.md).
It returns an `Extension`: the logits at every new position and what `commit` needs to keep any
prefix of them. Every decoder in the package is made of it:

  prefill       forward on an empty state over the prompt, commit the whole prompt
  AR step       Q = 1, commit it
  BLT-S verify  Q = k + 1 (x0 and the drafts), commit the verified prefix
  BLT-D commit  Q = the block, with the open patch's latent for the next block
  BLT-DV verify Q = Z + 1

plus `draft_step` (the local encoder and decoder only, at given positions with a given latent:
BLT-S drafts, BLT-DV's clean x0) and the caches that `bltd.block_logits` reads.

State invariant after `commit`, per row with n committed ids:
  * the entropy / encoder / decoder rings hold keys of positions < n (the last R of them; entries
    at positions >= n are stale speculation and invisible: queries read ring keys < their first
    new position only);
  * `next_start`: slot n starts a patch; patches 0..n_closed-1 are closed, their global keys in
    the global cache (the newest possibly still in `pend_k/pend_v`, see `flush_global`);
  * the open patch (index n_closed) holds `patch_len` bytes (stale when next_start) with their
    running max `patch_max` and pooling keys `patch_k/v` (as `flush_patch` writes the pending
    ones into them);
  * `lat_k/v`: the decoder cross-attention keys of the latent byte n-1 reads (the newest closed
    patch); `open_k/v`: those of the patch holding byte n-1 pooled over the bytes it has (the
    BLT-D block latent, arXiv 2605.08044 §4.3; computed when asked, else = lat);
  * `logits`: next-byte logits at position n-1.

Longer than 600 lines: the state, its caches, the one forward and its commit are one contract
(docs/decoding.md); the state's sharding and the pass counting belong with them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from bltjax.config import BLTConfig
from bltjax.modeling import kernels, model, patching, sharding
from bltjax.modeling.layers import (
  CACHE_CHUNK,
  CacheKeys,
  attending,
  dtype_of,
  local_mask,
  run_stack,
  scatter_slots,
)

PASSES = ("decoder", "global", "encoder", "entropy")  # per-row pass counters, in this order


def passes(*, decoder, global_=0, encoder=0, entropy=0) -> jax.Array:
  """[B, 4] per-row pass counts in PASSES order, by name (scalars broadcast to the rows)."""
  cols = jnp.broadcast_arrays(*(jnp.asarray(x, jnp.int32)
                                for x in (decoder, global_, encoder, entropy)))
  return jnp.stack(cols, axis=1)


class Ring(NamedTuple):
  """Keys/values of one stack's recent positions: k, v one [B·G, R, K] array per layer (batch
  and key heads merged, `layers.CacheKeys`); pos [B, R] the position each slot holds (-1:
  empty). One buffer per layer: a layer's attention reads it and the step's write updates it in
  place (slices of one stacked [L, ...] buffer were copied whole at every step)."""

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]
  pos: jax.Array


# Logical axes of the state's fields (docs/architecture.md, sharding): every batch dimension is
# `cache_batch`; the key heads of rings, global cache and pending keys `kv_heads` (the rows of a
# [B·G, C, K] cache are both, batch major); the pooling and latent heads `heads`; positions, slots
# and features stay whole. "ring" and "layers" expand per layer (`state_logical_axes`).
_B = "cache_batch"
_ROW, _ROW2 = P(_B), P(_B, None)
_KEYS = P(None, _B, "kv_heads", None)  # [L, B, G, K]
_POOL = P(_B, None, "heads", None)  # [B, C, H, K]
_LAT = P(None, _B, None, "heads", None)  # [L, B, C, H, K]


def _axes(spec):
  return dataclasses.field(metadata={"axes": spec})


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class State:
  ent: Ring | None = _axes("ring")
  enc: Ring = _axes("ring")
  dec: Ring = _axes("ring")
  glob_k: tuple[jax.Array, ...] = _axes("layers")  # per layer [B·G, Pmax, K] (as rings)
  glob_v: tuple[jax.Array, ...] = _axes("layers")
  pend_k: jax.Array = _axes(_KEYS)  # [Lg, B, G, K] keys of the patch an AR step closed, written
  pend_v: jax.Array = _axes(_KEYS)  # next call
  pend_idx: jax.Array = _axes(_ROW)  # [B] their global slot (Pmax = nothing pending)
  n_closed: jax.Array = _axes(_ROW)  # [B]
  patch_max: jax.Array = _axes(_ROW2)  # [B, De]
  patch_k: jax.Array = _axes(_POOL)  # [B, cap, Hx, Kx]
  patch_v: jax.Array = _axes(_POOL)
  pend_hk: jax.Array = _axes(_POOL)  # [B, max_q, Hx, Kx] pooling keys committed last call,
  pend_hv: jax.Array = _axes(_POOL)  # written next call (`flush_patch`; as pend_k)
  pend_slot: jax.Array = _axes(_ROW2)  # [B, max_q] their slots in patch_k (cap = none)
  patch_len: jax.Array = _axes(_ROW)  # [B]
  lat_k: jax.Array = _axes(_LAT)  # [Ld, B, C, Hx, Kx]
  lat_v: jax.Array = _axes(_LAT)
  open_k: jax.Array = _axes(_LAT)  # [Ld, B, C, Hx, Kx]
  open_v: jax.Array = _axes(_LAT)
  open_gk: jax.Array = _axes(_KEYS)  # [Lg, B, G, K] global keys of the open patch (force_boundary
  open_gv: jax.Array = _axes(_KEYS)  # closes it)
  n: jax.Array = _axes(_ROW)  # [B]
  hist: jax.Array = _axes(_ROW2)  # [B, Nh] last ids, newest last (hash n-grams, space patching)
  H_last: jax.Array = _axes(_ROW)  # [B] entropy at n-1
  rule_start: jax.Array = _axes(_ROW)  # [B] slot n starts a patch by the mode's rule alone
  next_start: jax.Array = _axes(_ROW)  # [B]
  logits: jax.Array = _axes(_ROW2)  # [B, V]


@dataclasses.dataclass(frozen=True)
class CacheSpec:
  """Static sizes of the decoding state."""

  max_patches: int  # global cache slots (a multiple of CACHE_CHUNK when larger)
  max_len: int  # positions a row may reach (prompt bucket + generation): rings of window-None
  # stacks hold them all
  patch_cap: int = 512  # bytes one patch may hold; max_patch_length if set
  max_q: int = 1  # the most positions one forward (or speculation window) writes past n

  def __post_init__(self):
    if self.max_patches > CACHE_CHUNK and self.max_patches % CACHE_CHUNK:
      raise ValueError(f"max_patches={self.max_patches} must be <= {CACHE_CHUNK} or a multiple "
                       "of it")

  def ring(self, window: int | None) -> int:
    # Reading before writing, a call at n needs positions >= n + 1 - W after a previous call
    # wrote max_q positions past the committed ones: W + max_q slots suffice.
    return (window if window is not None else self.max_len) + self.max_q


def decoding_config(cfg: BLTConfig) -> BLTConfig:
  """Remat only matters for gradients."""
  return cfg if cfg.remat == "none" else cfg.replace(remat="none")


def check_supported(cfg: BLTConfig) -> None:
  p = cfg.patcher
  if p.mode == "entropy" and cfg.entropy is None:
    raise ValueError("patcher.mode: entropy patching needs the entropy model, and the "
                     "checkpoint has none")
  if not p.incremental:
    raise ValueError("patcher.threshold: top-k entropy patching (threshold=None) is not "
                     "incremental, so it cannot be decoded byte by byte")
  if p.mode == "static":
    raise ValueError("patcher.mode: static patching has no BOS-alone first patch, so the first "
                     "bytes read the latent of their own open patch; cached decoding supports "
                     "entropy, space and byte patching")


def uses_entropy(cfg: BLTConfig) -> bool:
  return cfg.entropy is not None and cfg.patcher.mode == "entropy"


def hist_len(cfg: BLTConfig) -> int:
  return max((*cfg.hash.group_sizes, 2)) if cfg.hash.num_tables else 2


class _Instrument:
  """Host-side count of the passes each stack really executes (tests compare it with the
  per-row `passes` counters). Off unless `instrument()` is active when a program is traced."""

  enabled = False
  counts: collections.Counter = collections.Counter()


@contextlib.contextmanager
def instrument():
  """Counts executed passes per stack while active: `with instrument() as counts: ...`.
  Clears the compilation caches on entry so programs are traced with the counting callbacks
  (programs compiled inside keep them afterwards, counting into a dropped counter: for tests)."""
  jax.clear_caches()
  _Instrument.enabled, _Instrument.counts = True, collections.Counter()
  try:
    yield _Instrument.counts
  finally:
    jax.effects_barrier()
    _Instrument.enabled, _Instrument.counts = False, collections.Counter()


def tick(name: str, on) -> None:
  """Counts one executed pass of stack `name` when `on` (traced) is true and counting is on."""
  if _Instrument.enabled:
    jax.debug.callback(lambda x: _Instrument.counts.update({name: int(x)}), jnp.any(on))


# ------------------------------------------------------------------------------------------------
# Rings.


def ring_keys(ring: Ring, pos_BxQ, window: int | None) -> CacheKeys:
  """A ring as keys for queries at pos (a row's positions start at pos[:, 0]): slots holding a
  position before the first query and within each query's window."""
  d = pos_BxQ[:, :, None] - ring.pos[:, None, :]
  ok = (ring.pos >= 0)[:, None, :] & (ring.pos[:, None, :] < pos_BxQ[:, :1, None])
  if window is not None:
    ok &= d < window
  return CacheKeys(ring.k, ring.v, ok)


def ring_write(ring: Ring, k_LxBxQxGxK, v_LxBxQxGxK, pos_BxQ, write_BxQ) -> Ring:
  """Scatters new keys at slot pos % R (in place under donation); masked positions are dropped.
  Callers keep at most R positions per row in one write (slots must not collide)."""
  r = ring.pos.shape[1]
  b_BxQ = jnp.broadcast_to(jnp.arange(pos_BxQ.shape[0])[:, None], pos_BxQ.shape)
  slot = jnp.where(write_BxQ, pos_BxQ % r, r)
  return Ring(layer_scatter(ring.k, b_BxQ, slot, k_LxBxQxGxK),
              layer_scatter(ring.v, b_BxQ, slot, v_LxBxQxGxK),
              ring.pos.at[b_BxQ, slot].set(pos_BxQ, mode="drop"))


def layer_scatter(bufs, rows, slots, new_LxRx):
  """`layers.scatter_slots` per layer: buf_i[rows·G + g, slots] = new[i][..., g, :]."""
  return tuple(scatter_slots(buf, rows, slots, x) for buf, x in zip(bufs, new_LxRx, strict=True))


def run_on_ring(layers, x_BxQxD, pos_BxQ, valid_BxQ, ring: Ring, window: int | None, cross=None):
  """A stack over Q new positions (causal among them) against its ring; writes the keys of the
  valid ones (the last R per row)."""
  r = ring.pos.shape[1]
  if pos_BxQ.shape[1] + (window or 0) <= r:
    # Each layer writes its keys first and reads the ring alone (in place, `CacheKeys.slots`):
    # the Q writes evict only positions more than a window before the first query. Slots at
    # positions >= the first query that this call does not rewrite hold later positions than
    # any valid query, which causality hides.
    b_BxQ = jnp.broadcast_to(jnp.arange(pos_BxQ.shape[0])[:, None], pos_BxQ.shape)
    slot = jnp.where(valid_BxQ, pos_BxQ % r, r)
    kpos = ring.pos.at[b_BxQ, slot].set(pos_BxQ, mode="drop")
    ok = local_mask(pos_BxQ, kpos, jnp.zeros_like(pos_BxQ), jnp.zeros_like(kpos), kpos >= 0,
                    window)
    x, k, v = run_stack(layers, x_BxQxD, pos_BxQ, None, CacheKeys(ring.k, ring.v, ok, slots=slot),
                        cross)
    return x, Ring(k, v, kpos)
  # Prefill of a prompt longer than the ring allows: read, then write the last R positions.
  zeros = jnp.zeros_like(pos_BxQ)
  mask = local_mask(pos_BxQ, pos_BxQ, zeros, zeros, valid_BxQ, window)
  x, k, v = run_stack(layers, x_BxQxD, pos_BxQ, mask, ring_keys(ring, pos_BxQ, window), cross)
  last = jnp.max(jnp.where(valid_BxQ, pos_BxQ, -1), axis=1, keepdims=True)
  return x, ring_write(ring, k, v, pos_BxQ, valid_BxQ & (pos_BxQ > last - r))


def on_ring(ring: Ring, valid_BxQ, window: int | None):
  """How a stack attends over Q new positions against its ring, as the model's stage functions
  take it (`layers.attending`): `run(layers, x, pos, cross=None) -> (x, the ring written)`."""
  return lambda layers, x, pos, cross=None: run_on_ring(layers, x, pos, valid_BxQ, ring, window,
                                                        cross)


def _empty_ring(n_layers: int, b: int, g: int, r: int, kd: int, dtype) -> Ring:
  z = (jnp.zeros((b * g, r, kd), dtype),) * n_layers
  return Ring(z, z, jnp.full((b, r), -1, jnp.int32))


def cache_dtype(cfg: BLTConfig):
  """The dtype of every key/value cache and carried activation of the state: the compute dtype
  (bf16 compute keeps bf16 caches; exact mode, fp32 compute over bf16 weights, fp32 caches; see
  `bltjax.precision`). The entropy model's ring, logits and entropies stay fp32 (the entropy
  model computes in fp32 whatever the compute dtype, `model.entropy_module`)."""
  return dtype_of(cfg.dtype)


def empty_state(params, cfg: BLTConfig, b: int, spec: CacheSpec) -> State:
  """The state before BOS: every cache empty, slot 0 starts patch 0."""
  dt = cache_dtype(cfg)
  e, d, g = cfg.encoder, cfg.decoder, cfg.global_
  ring = lambda st, dtype=dt: _empty_ring(st.n_layers, b, st.kv_heads,  # noqa: E731
                                          spec.ring(st.window), st.head_dim, dtype)
  hx = cfg.cross_attn_nheads or e.n_heads
  hd = cfg.cross_attn_nheads or d.n_heads
  c = cfg.cross_attn_k
  zb = lambda *s: jnp.zeros((b, *s), jnp.int32)  # noqa: E731
  lat = jnp.zeros((d.n_layers, b, c, hd, d.dim // hd), dt)
  gk = (jnp.zeros((b * g.kv_heads, spec.max_patches, g.head_dim), dt),) * g.n_layers
  pend = jnp.zeros((g.n_layers, b, g.kv_heads, g.head_dim), dt)
  return State(
    ent=ring(cfg.entropy, jnp.float32) if uses_entropy(cfg) else None, enc=ring(e), dec=ring(d),
    glob_k=gk, glob_v=gk, pend_k=pend, pend_v=pend,
    pend_idx=jnp.full((b,), spec.max_patches, jnp.int32), n_closed=zb(),
    patch_max=jnp.zeros((b, e.dim), dt), patch_k=jnp.zeros((b, spec.patch_cap, hx, e.dim // hx),
                                                             dt),
    patch_v=jnp.zeros((b, spec.patch_cap, hx, e.dim // hx), dt), patch_len=zb(),
    pend_hk=jnp.zeros((b, spec.max_q, hx, e.dim // hx), dt),
    pend_hv=jnp.zeros((b, spec.max_q, hx, e.dim // hx), dt),
    pend_slot=jnp.full((b, spec.max_q), spec.patch_cap, jnp.int32),
    lat_k=lat, lat_v=lat, open_k=lat, open_v=lat, open_gk=pend, open_gv=pend, n=zb(),
    hist=zb(hist_len(cfg)), H_last=jnp.zeros((b,), jnp.float32),
    rule_start=jnp.ones((b,), bool), next_start=jnp.ones((b,), bool),
    logits=jnp.zeros((b, cfg.vocab_size), jnp.float32))


def flush_global(state: State) -> tuple[jax.Array, jax.Array]:
  """The global cache with the pending keys written (in place under donation)."""
  b_B = jnp.arange(state.pend_idx.shape[0])
  return (layer_scatter(state.glob_k, b_B, state.pend_idx, state.pend_k),
          layer_scatter(state.glob_v, b_B, state.pend_idx, state.pend_v))


def flush_patch(state: State) -> tuple[jax.Array, jax.Array]:
  """The open patch's pooling keys with the pending ones written (in place under donation)."""
  rows = jnp.broadcast_to(jnp.arange(state.pend_slot.shape[0])[:, None], state.pend_slot.shape)
  put = lambda buf, x: buf.at[rows, state.pend_slot].set(x, mode="drop")  # noqa: E731
  return put(state.patch_k, state.pend_hk), put(state.patch_v, state.pend_hv)


def _open_max(state: State, on_B) -> jax.Array:
  """The open patch's running max where `on_B` (its bytes continue it), else -inf (none)."""
  return jnp.where(on_B[:, None], state.patch_max, -jnp.inf)


def global_slots(state: State) -> int:
  """Slots of the global cache (patches a row may close)."""
  return state.glob_k[0].shape[1]


# ------------------------------------------------------------------------------------------------
# The forward.


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Extension:
  """`forward`'s result: the state with every cache written for the Q positions (counters not
  yet advanced) and, per new position j (at n + j), what `commit` needs to stop after it."""

  state: State
  ids: jax.Array  # [B, Q]
  valid: jax.Array  # [B, Q]
  logits: jax.Array  # [B, Q, V] next-byte logits at n + j
  H: jax.Array  # [B, Q]
  rule: jax.Array  # [B, Q] slot n+j+1 starts by the mode's rule
  start: jax.Array  # [B, Q] slot n+j+1 starts a patch: the patch holding n+j closes at j
  patch: jax.Array  # [B, Q] local patch of byte n+j (0 = the patch open before the call)
  slot: jax.Array  # [B, Q] buffer slot of byte n+j in its patch
  h: jax.Array  # [B, Q, De] encoder byte states
  hk: jax.Array  # [B, Q, Hx, Kx] pooling keys/values of the new bytes
  hv: jax.Array
  lat_k: jax.Array  # [Ld, B, Q, C, Hx, Kx] latent read at n+j
  lat_v: jax.Array
  open_k: jax.Array  # [Ld, B, Q, C, Hx, Kx] latent of local patch p pooled over the window
  open_v: jax.Array
  open_gk: jax.Array  # [Lg, B, Q, G, K] its global keys
  open_gv: jax.Array
  passes: jax.Array  # [B, 4] passes each row took part in (PASSES order)


def _patch_starts(cfg: BLTConfig, st: State, ids_BxQ, valid_BxQ, H_BxQ, fresh: bool):
  """(start, rule) [B, Q]: does slot n+j+1 start a patch (and by the mode's rule alone)."""
  p = cfg.patcher
  if fresh:  # the whole row from BOS: the vectorised patcher
    lengths = jnp.sum(valid_BxQ.astype(jnp.int32), axis=1)
    h = H_BxQ if p.mode == "entropy" else None
    start = patching.patch_starts(p, ids_BxS=ids_BxQ, lengths_B=lengths, H_BxS=h)[:, 1:]
    rule = patching.rule_patch_starts(p, ids_BxS=ids_BxQ, lengths_B=lengths, H_BxS=h)[:, 1:]
    return start & valid_BxQ, rule
  b, q = ids_BxQ.shape
  length = jnp.where(st.next_start, 0, st.patch_len)
  s_j, h_prev, rule_prev, id_prev = st.next_start, st.H_last, st.rule_start, st.hist[:, -1]
  starts, rules = [], []
  for j in range(q):  # elementwise per position; Q is small whenever the state is not fresh
    length = jnp.where(s_j, 0, length) + 1
    start, rule = patching.next_slot_starts(
      p, pos_B=st.n + j, open_len_B=length, H_B=H_BxQ[:, j], H_prev_B=h_prev,
      rule_start_B=rule_prev, id_B=ids_BxQ[:, j], id_prev_B=id_prev)
    start &= valid_BxQ[:, j]
    starts.append(start)
    rules.append(rule)
    s_j, h_prev, rule_prev, id_prev = start, H_BxQ[:, j], rule, ids_BxQ[:, j]
  return jnp.stack(starts, axis=1), jnp.stack(rules, axis=1)


# ------------------------------------------------------------------------------------------------
# `forward`, stage by stage (arXiv 2412.09871 §2): entropy model -> local encoder -> patch starts
# -> pooling and the global model (only for the patches that need a latent) -> the latent each
# position reads -> local decoder. Each stage reads and writes its own caches.


def _entropy_stage(params, cfg: BLTConfig, st: State, ids_BxQ, pos_BxQ, valid_BxQ, row_on_B):
  """(entropy ring, next-byte entropies H [B, Q]; zeros when the patcher needs none)."""
  b, q = ids_BxQ.shape
  if not uses_entropy(cfg):
    return st.ent, jnp.zeros((b, q), jnp.float32)
  tick("entropy", row_on_B)

  def ent_fn(m, ids, pos, ring):
    return m.logits(ids, pos, on_ring(ring, valid_BxQ, m.cfg.window))

  e_logits, ent = model.apply_entropy(params, cfg, ent_fn, ids_BxQ, pos_BxQ, st.ent)
  return ent, patching.entropies_from_logits(e_logits)


def _encoder_stage(params, cfg: BLTConfig, st: State, ids_BxQ, pos_BxQ, valid_BxQ):
  """(byte states h [B, Q, De], encoder ring, pooling keys and values [B, Q, Hx, Kx]); hash
  n-grams from each position's id history."""
  q, nh = ids_BxQ.shape[1], st.hist.shape[1]
  jj = jnp.arange(q)
  all_ids = jnp.concatenate([st.hist, ids_BxQ], axis=1)
  hist_BxQxNh = all_ids[:, jj[:, None] + 1 + jnp.arange(nh)[None]]

  def enc_fn(m, hist, pos, ring):
    h, ring = encoder_states(m, cfg, hist, pos, valid_BxQ, ring)
    return h, ring, m.local_encoder.pool_kv(h)

  h, enc, (hk, hv) = model.apply_blt(params, cfg, enc_fn, hist_BxQxNh, pos_BxQ, st.enc)
  return h, enc, hk, hv


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Where the Q new bytes fall among patches: starts, local patch p_j of each byte (0 = the
  patch open before the call), its slot in that patch, which local patches close."""

  start: jax.Array  # [B, Q] slot n+j+1 starts a patch
  rule: jax.Array  # [B, Q] ... by the mode's rule alone
  si: jax.Array  # [B, Q] start as int32
  patch: jax.Array  # [B, Q]
  old_len: jax.Array  # [B] bytes of the patch open before the call
  slot: jax.Array  # [B, Q]
  seg: jax.Array  # [B, Q] patch, with invalid bytes in a dropped segment Q
  closes: jax.Array  # [B, Q] local patch p closes in the window


def _patch_layout(cfg: BLTConfig, st: State, ids_BxQ, valid_BxQ, H_BxQ, fresh: bool) -> _Layout:
  q = ids_BxQ.shape[1]
  jj = jnp.arange(q, dtype=jnp.int32)
  start, rule = _patch_starts(cfg, st, ids_BxQ, valid_BxQ, H_BxQ, fresh)
  si = start.astype(jnp.int32)
  patch = jnp.cumsum(si, axis=1) - si
  old_len = jnp.where(st.next_start, 0, st.patch_len)
  first = jax.lax.cummax(jnp.where((jj[None] == 0) | (jnp.pad(si, ((0, 0), (1, 0)))[:, :q] > 0),
                                   jj[None], 0), axis=1)
  slot = jj[None] - first + jnp.where(patch == 0, old_len[:, None], 0)
  seg = jnp.where(valid_BxQ, patch, q)  # invalid bytes go to a dropped segment
  closes = jax.vmap(lambda s, i: jax.ops.segment_max(s, i, num_segments=q + 1))(
    si, seg)[:, :q] > 0
  return _Layout(start, rule, si, patch, old_len, slot, seg, closes)


def _global_stage(params, cfg: BLTConfig, st: State, lay: _Layout, h_BxQxD, hk, hv, valid_BxQ,
                  row_on_B, *, fresh: bool, open_latent: bool):
  """Pools every local patch that needs a latent (its running max, C queries over its cached and
  new bytes) and runs the global model over them.

  Returns (pooled byte states [B, Q, De], pooling caches (k, v), global caches (k, v) with the
  closed patches written, the new patches' global keys/values [Lg, B, Q, G, K] x 2, their
  latents' cross-attention keys/values [Ld, B, Q, C, Hx, Kx] x 2, the pending AR write, whether
  the global model ran, which local patches wanted a latent)."""
  b, q = lay.patch.shape
  jj = jnp.arange(q, dtype=jnp.int32)
  old_len, patch, closes = lay.old_len, lay.patch, lay.closes
  hd = h_BxQxD.astype(st.patch_max.dtype)
  pmax = kernels.max_pool(hd, patch, valid_BxQ, q, open_BxD=_open_max(st, old_len > 0))
  patch_k, patch_v = flush_patch(st)
  cap = patch_k.shape[1]
  p_q = jj[:, None]  # [Q(patch), 1]
  key_ok = jnp.concatenate([
    (p_q == 0)[None] & (jnp.arange(cap)[None, None] < old_len[:, None, None]),
    (patch[:, None, :] == p_q[None]) & valid_BxQ[:, None, :]], axis=2)  # [B, Q(patch), cap + Q]
  gk, gv = flush_global(st)
  pslots = global_slots(st)
  gpos = jnp.minimum(st.n_closed[:, None] + jj[None], pslots - 1)  # RoPE position of patch p
  # Keys among the new patches: the patches closing at or before p, and p itself.
  new_ok = ((closes[:, None, :] & (jj[None, None] <= p_q[None])) | jnp.eye(q, dtype=bool)[None])
  n_pos = jnp.sum(valid_BxQ.astype(jnp.int32), axis=1)
  last_patch = jnp.take_along_axis(patch, jnp.maximum(n_pos - 1, 0)[:, None], axis=1)[:, 0]
  wanted = closes | (open_latent & (jj[None] == last_patch[:, None]))

  def glob_fn(m, pmax, key_ok, gpos, new_ok, gk, gv):
    tick("global", row_on_B if q > 1 else jnp.any(wanted & valid_BxQ))
    enc_m, g = m.local_encoder, m.global_transformer
    # Built here, inside the AR step's `cond`: a step that closes no patch copies nothing.
    keys = jnp.concatenate([patch_k, hk.astype(patch_k.dtype)], axis=1)
    vals = jnp.concatenate([patch_v, hv.astype(patch_v.dtype)], axis=1)
    x_g = enc_m.pool_patches(pmax, keys, vals, key_ok)
    x, (nk, nv) = g.latents(x_g, gpos, attending(new_ok, CacheKeys(gk, gv, used=st.n_closed)))
    lk = m.local_decoder.latent_kv(x)
    lat = jnp.stack([a for a, _ in lk]), jnp.stack([a for _, a in lk])
    return (jnp.stack(nk), jnp.stack(nv), *lat)

  def glob_all():
    return model.apply_blt(params, cfg, glob_fn, pmax, key_ok, gpos, new_ok, gk, gv)

  def glob_some(g: int):
    """The global step over each row's first g wanted local patches only (a verification
    closes about Q/4 of its Q slots), scattered back to the Q slots (the rest stay 0 and are
    never read)."""
    sel = jnp.argsort(~wanted, axis=1, stable=True)[:, :g]  # ascending local patch index
    take = lambda x: jnp.take_along_axis(  # noqa: E731
      x, sel.reshape(sel.shape + (1,) * (x.ndim - 2)), axis=1)
    outs = model.apply_blt(params, cfg, glob_fn, take(pmax), take(key_ok), take(gpos),
                jnp.take_along_axis(take(new_ok), sel[:, None, :], axis=2), gk, gv)
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], sel.shape)
    put = lambda x: jnp.zeros(x.shape[:2] + (q,) + x.shape[3:], x.dtype).at[  # noqa: E731
      :, rows, sel].set(x)
    return tuple(put(x) for x in outs)

  if q == 1:  # the AR step: the global model runs only when some row closes a patch
    run_g = jnp.any(wanted & row_on_B[:, None])
    shapes = jax.eval_shape(glob_all)
    nk, nv, lk, lv = jax.lax.cond(
      run_g, glob_all, lambda: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes))
    # Written by the next call (before its read), never after this `cond`: a cache updated
    # after a `cond` that reads it gets copied whole.
    hit = closes[:, 0] & valid_BxQ[:, 0]
    pend = dict(pend_k=nk[:, :, 0], pend_v=nv[:, :, 0],
                pend_idx=jnp.where(hit, st.n_closed, pslots).astype(jnp.int32))
  else:
    run_g = jnp.ones((), bool)
    if q > 1024 or (fresh and q < 64):
      nk, nv, lk, lv = glob_all()
    else:
      # As few rows through the global model as the widest row needs: 3 compiled sizes for a
      # cycle (a verification closes about Q/4 of its Q slots), 4 for a prefill of 64 bytes
      # or more (a prompt of S bytes has about S/4 patches, and its bucket pads S up to twice
      # the prompt); shorter prefills cost little and compile one.
      sizes = sorted({-(-q // 4), -(-q // 2), q} | ({-(-q // 8)} if fresh else set()))
      most = jnp.max(jnp.sum(wanted.astype(jnp.int32), axis=1))
      branch = jnp.sum((jnp.asarray(sizes[:-1]) < most).astype(jnp.int32))
      nk, nv, lk, lv = jax.lax.switch(
        branch, [functools.partial(glob_some, g) if g < q else glob_all for g in sizes])
    b_BxQ = jnp.broadcast_to(jnp.arange(b)[:, None], (b, q))
    wslot = jnp.where(closes & (st.n_closed[:, None] + jj[None] < pslots),
                      st.n_closed[:, None] + jj[None], pslots)
    gk, gv = layer_scatter(gk, b_BxQ, wslot, nk), layer_scatter(gv, b_BxQ, wslot, nv)
    pend = dict(pend_k=st.pend_k, pend_v=st.pend_v,
                pend_idx=jnp.full((b,), pslots, jnp.int32))
  return hd, (patch_k, patch_v), (gk, gv), (nk, nv), (lk, lv), pend, run_g, wanted


def _latent_read(st: State, lay: _Layout, lk, lv):
  """The latent each position reads: its own patch's when it closes there, else the newest patch
  closed before it, else the state's (arXiv 2412.09871 §4.4). [Ld, B, Q, C, Hx, Kx] x 2."""
  lat = lay.patch + lay.si - 1
  old = (lat < 0) & (st.n_closed > 0)[:, None]
  pick = lambda new, prev: jnp.where(  # noqa: E731
    old[None, :, :, None, None, None], prev[:, :, None],
    jnp.take_along_axis(new, jnp.maximum(lat, 0)[None, :, :, None, None, None], axis=2))
  return pick(lk, st.lat_k), pick(lv, st.lat_v)


def _decoder_stage(params, cfg: BLTConfig, st: State, h_BxQxD, pos_BxQ, valid_BxQ, lat_k, lat_v):
  """(next-byte logits [B, Q, V], decoder ring)."""
  def dec_fn(m, h, ring):
    return m.local_decoder.logits(h, pos_BxQ, on_ring(ring, valid_BxQ, cfg.decoder.window),
                                  lambda i: (lat_k[i], lat_v[i]))

  return model.apply_blt(params, cfg, dec_fn, h_BxQxD, st.dec)


def _forward(params, cfg: BLTConfig, st: State, ids_BxQ, valid_BxQ, *, fresh: bool = False,
             open_latent: bool = False) -> Extension:
  q = ids_BxQ.shape[1]
  valid = valid_BxQ.astype(bool)
  ids = jnp.where(valid, ids_BxQ, 0).astype(jnp.int32)
  row_on = jnp.any(valid, axis=1)
  pos = st.n[:, None] + jnp.arange(q, dtype=jnp.int32)[None]
  tick("encoder", row_on)
  tick("decoder", row_on)
  ent, H = _entropy_stage(params, cfg, st, ids, pos, valid, row_on)
  h, enc, hk, hv = _encoder_stage(params, cfg, st, ids, pos, valid)
  lay = _patch_layout(cfg, st, ids, valid, H, fresh)
  hd, (patch_k, patch_v), (gk, gv), (nk, nv), (lk, lv), pend, run_g, wanted = _global_stage(
    params, cfg, st, lay, h, hk, hv, valid, row_on, fresh=fresh, open_latent=open_latent)
  lat_k, lat_v = _latent_read(st, lay, lk, lv)
  logits, dec = _decoder_stage(params, cfg, st, h, pos, valid, lat_k, lat_v)
  on = row_on.astype(jnp.int32)
  g_pass = (jnp.any(wanted & valid, axis=1) if q == 1 else row_on) & run_g
  counts = passes(decoder=on, global_=g_pass, encoder=on, entropy=on * uses_entropy(cfg))
  state = dataclasses.replace(st, ent=ent, enc=enc, dec=dec, glob_k=gk, glob_v=gv,
                              patch_k=patch_k, patch_v=patch_v, **pend)
  return Extension(state=state, ids=ids, valid=valid, logits=logits, H=H, rule=lay.rule,
                   start=lay.start, patch=lay.patch, slot=lay.slot, h=hd, hk=hk, hv=hv,
                   lat_k=lat_k, lat_v=lat_v, open_k=lk, open_v=lv, open_gk=nk, open_gv=nv,
                   passes=counts)


def encoder_states(m, cfg: BLTConfig, hist_BxQxNh, pos_BxQ, valid_BxQ, ring: Ring):
  """Local-encoder byte states of Q new positions (hash n-grams from each one's id history)."""
  enc = m.local_encoder
  b, q, nh = hist_BxQxNh.shape
  hpos = pos_BxQ[..., None] - (nh - 1) + jnp.arange(nh)[None, None]
  e = enc.embed(hist_BxQxNh.reshape(b * q, nh), hpos.reshape(b * q, nh),
                hpos.reshape(b * q, nh) >= 0, first=nh - 1).reshape(b, q, -1)
  return enc.states(e, pos_BxQ, on_ring(ring, valid_BxQ, cfg.encoder.window))


@jax.jit
def commit(ext: Extension, a_B, active_B) -> State:
  """The state after positions n..n+a (ids ext.ids[:, :a+1]) for active rows; others unchanged.
  Everything past a stays in the caches but is invisible and overwritten later."""
  st = ext.state
  b, q = ext.ids.shape
  a = jnp.clip(a_B, 0, q - 1).astype(jnp.int32)
  at = lambda x: jnp.take_along_axis(  # noqa: E731
    x, a.reshape((b, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]
  at_l = lambda x: jnp.take_along_axis(  # noqa: E731  (a latent array [L, B, Q, ...])
    x, a.reshape((1, b, 1) + (1,) * (x.ndim - 3)), axis=2)[:, :, 0]
  keep = lambda new, old, ax=0: jnp.where(  # noqa: E731
    active_B.reshape((1,) * ax + (-1,) + (1,) * (new.ndim - 1 - ax)), new, old)
  nh = st.hist.shape[1]
  all_ids = jnp.concatenate([st.hist, ext.ids], axis=1)
  hist = jax.vmap(lambda r, i: jax.lax.dynamic_slice(r, (i,), (nh,)))(all_ids, a + 1)
  jj = jnp.arange(q)[None]
  p_a = at(ext.patch)
  mine = (ext.patch == p_a[:, None]) & (jj <= a[:, None]) & ext.valid  # byte a's patch, <= a
  old_len = jnp.where(st.next_start, 0, st.patch_len)
  # The open patch after n+a: its cached bytes (when it began before n) and its new bytes.
  wr = mine & active_B[:, None]
  cap = st.patch_k.shape[1]
  slot = jnp.where(wr, ext.slot, cap)
  hk, hv = ext.hk.astype(st.patch_k.dtype), ext.hv.astype(st.patch_v.dtype)
  mq = st.pend_slot.shape[1]
  if q <= mq:  # written by the next forward, before its pooling read
    pad = lambda x, fill: jnp.pad(x, ((0, 0), (0, mq - q)) + ((0, 0),) * (x.ndim - 2),  # noqa
                                  constant_values=fill)
    pk, pv = st.patch_k, st.patch_v
    pend = dict(pend_hk=pad(hk, 0), pend_hv=pad(hv, 0), pend_slot=pad(slot, cap))
  else:  # a prefill longer than any later call: written now
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, q))
    pk = st.patch_k.at[rows, slot].set(hk, mode="drop")
    pv = st.patch_v.at[rows, slot].set(hv, mode="drop")
    pend = dict(pend_slot=jnp.full_like(st.pend_slot, cap))
  pmax = kernels.max_pool(ext.h, jnp.zeros_like(ext.patch), mine, 1,
                          open_BxD=_open_max(st, (p_a == 0) & (old_len > 0)))[:, 0]
  n_new_closed = jnp.sum((ext.start & (jj <= a[:, None])).astype(jnp.int32), axis=1)
  start_a = at(ext.start)
  # The open latent: patch p_a pooled over the window (valid when a is the window's last
  # position, the only place it is read), or the closed latent when the patch closed at a.
  take_p = lambda x, ax=2: jnp.take_along_axis(  # noqa: E731
    x, p_a.reshape((1, b, 1) + (1,) * (x.ndim - 3)), axis=ax)[:, :, 0]
  lat_k, lat_v = at_l(ext.lat_k), at_l(ext.lat_v)
  sel = start_a.reshape(1, b, 1, 1, 1)
  open_k = jnp.where(sel, lat_k, take_p(ext.open_k))
  open_v = jnp.where(sel, lat_v, take_p(ext.open_v))
  return dataclasses.replace(
    st, n_closed=keep(st.n_closed + n_new_closed, st.n_closed),
    patch_max=keep(pmax.astype(st.patch_max.dtype), st.patch_max), patch_k=pk, patch_v=pv, **pend,
    patch_len=keep(at(ext.slot) + 1, st.patch_len),
    lat_k=keep(lat_k, st.lat_k, 1), lat_v=keep(lat_v, st.lat_v, 1),
    open_k=keep(open_k, st.open_k, 1), open_v=keep(open_v, st.open_v, 1),
    open_gk=keep(take_p(ext.open_gk), st.open_gk, 1),
    open_gv=keep(take_p(ext.open_gv), st.open_gv, 1),
    n=st.n + jnp.where(active_B, a + 1, 0), hist=keep(hist, st.hist),
    H_last=keep(at(ext.H), st.H_last), rule_start=keep(at(ext.rule), st.rule_start),
    next_start=keep(start_a, st.next_start), logits=keep(at(ext.logits), st.logits))


forward = jax.jit(_forward, static_argnames=("cfg", "fresh", "open_latent"))


def _step(params, cfg: BLTConfig, state: State, x_B, active_B):
  """One AR step: commits byte x at position n for active rows, computes the next logits."""
  ext = _forward(params, cfg, state, x_B[:, None], active_B[:, None])
  return commit(ext, jnp.zeros_like(state.n), active_B)


step = jax.jit(_step, static_argnames=("cfg",), donate_argnames=("state",))


@functools.partial(jax.jit, static_argnames=("cfg", "spec", "open_latent"))
def prefill(params, cfg: BLTConfig, ids_BxS, lengths_B, spec: CacheSpec,
            open_latent: bool = False) -> State:
  """The prompt (right-padded ids with BOS first, lengths >= 1) through every stack: `forward`
  on an empty state, all of it committed."""
  cfg = decoding_config(cfg)
  check_supported(cfg)
  b, s = ids_BxS.shape
  valid = jnp.arange(s)[None] < lengths_B[:, None]
  st = empty_state(params, cfg, b, spec)
  ext = _forward(params, cfg, st, ids_BxS, valid, fresh=True, open_latent=open_latent)
  return commit(ext, lengths_B - 1, jnp.ones((b,), bool))


# ------------------------------------------------------------------------------------------------
# Sharding: rows over the batch axes, heads over tensor (sharding.ShardingRules).


def state_logical_axes(state: State) -> State:
  """The state's logical axes (a State of `PartitionSpec`s), from each field's declaration."""
  layer = P((_B, "kv_heads"), None, None)

  def of(f):
    spec, v = f.metadata["axes"], getattr(state, f.name)
    if spec == "layers":
      return (layer,) * len(v)
    if spec == "ring":
      return None if v is None else Ring((layer,) * len(v.k), (layer,) * len(v.v), _ROW2)
    return spec

  return State(**{f.name: of(f) for f in dataclasses.fields(State)})


def state_shardings(state: State, mesh, rules=None) -> State:
  """NamedShardings of a state (arrays or shapes) on `mesh`: `state_logical_axes` through the
  rules; a mesh axis that does not divide its dimension is dropped there (replicated), never moved
  to another dimension (a cache split over positions would gather at every step)."""
  rules = rules or sharding.ShardingRules()
  rows = state.n.shape[0]  # a merged cache dimension (B·G) splits as rows x heads

  def fit(spec, x):
    sharding.logical_to_physical(spec, rules)  # refuses a mesh axis used twice
    dims = []
    for d, name in zip(x.shape, spec, strict=True):
      parts = zip((rows, d // rows), name) if isinstance(name, tuple) else ((d, name),)
      kept = ()
      for size, part in parts:  # each part keeps the mesh axes that divide it, in order
        got = ()
        for a in rules.mesh_axes(part):
          if size % (math.prod(mesh.shape[k] for k in got) * mesh.shape[a]) == 0:
            got += (a,)
        kept += got
      dims.append(kept[0] if len(kept) == 1 else (kept or None))
    return NamedSharding(mesh, P(*dims))

  return jax.tree.map(fit, state_logical_axes(state), state, is_leaf=lambda x: isinstance(x, P))


# ------------------------------------------------------------------------------------------------
# Local stacks only: drafts, x0 of BLT-DV; closing the open patch (BLT-D's force_boundary).


def draft_step(params, cfg: BLTConfig, state: State, pos_B, hist_BxNh, lat_k, lat_v, active_B):
  """The local encoder byte layer and the decoder for the byte at pos (the last of its id
  history hist), reading the latent lat_k/v [Ld, B, C, Hx, Kx]: (logits [B, V], enc, dec rings with
  pos written). No entropy model, no global model."""
  pos = pos_B[:, None]
  w = active_B[:, None]

  def fn(m, hist, enc, dec):
    h, enc = encoder_states(m, cfg, hist[:, None], pos, w, enc)
    logits, dec = m.local_decoder.logits(h, pos, on_ring(dec, w, cfg.decoder.window),
                                         lambda i: (lat_k[i][:, None], lat_v[i][:, None]))
    return logits[:, 0], enc, dec

  tick("encoder", active_B)
  tick("decoder", active_B)
  return model.apply_blt(params, cfg, fn, hist_BxNh, state.enc, state.dec)


def close_open_patch(params, cfg: BLTConfig, state: State, active_B) -> tuple[State, jax.Array]:
  """Closes the open patch holding byte n-1 for active rows (BLT-D's "force_boundary",
  docs/choices.md): slot n starts a patch. Its global keys (computed by the previous forward,
  `open_gk/gv`) are written as a real closed patch and its latent (`open_k/v`) becomes the one
  byte n-1 and the next block read, as in training. Byte n-1 now ends a patch, so by the
  previous-patch rule its decoder position reads that latent too: the encoder and decoder step
  at n-1 is re-run (ring keys and the logits at n-1 replaced). Returns (state, rows that
  closed). The mode's own decision for slot n (`rule_start`) is kept for the threshold_add
  guard, as a `max_patch_length` split keeps it."""
  st = state
  close = active_B & ~st.next_start & (st.patch_len > 0)
  rows = jnp.arange(close.shape[0])
  slot = jnp.where(close, st.n_closed, global_slots(st))
  gk, gv = flush_global(st)
  gk = layer_scatter(gk, rows, slot, st.open_gk)
  gv = layer_scatter(gv, rows, slot, st.open_gv)
  logits, enc, dec = draft_step(params, cfg, st, st.n - 1, st.hist, st.open_k, st.open_v, close)
  sel = close[None, :, None, None, None]
  return dataclasses.replace(
    st, enc=enc, dec=dec, glob_k=gk, glob_v=gv,
    pend_idx=jnp.full_like(st.pend_idx, global_slots(st)),
    n_closed=st.n_closed + close.astype(jnp.int32), lat_k=jnp.where(sel, st.open_k, st.lat_k),
    lat_v=jnp.where(sel, st.open_v, st.lat_v), next_start=st.next_start | close,
    logits=jnp.where(close[:, None], logits, st.logits)), close


__all__ = ["Ring", "State", "CacheSpec", "Extension", "PASSES", "forward", "commit", "step",
           "prefill", "draft_step", "close_open_patch", "flush_global", "ring_keys", "ring_write",
           "run_on_ring", "on_ring", "encoder_states", "empty_state", "cache_dtype",
           "layer_scatter", "global_slots", "flush_patch", "check_supported", "uses_entropy",
           "hist_len", "decoding_config", "state_logical_axes", "state_shardings"]
