"""BLT-S self-speculative greedy decoding (fast_blt.md §5) on the cached engine of decoding.py.

Each cycle, per row with n committed ids whose next-byte logits are known:

  x0      = argmax(logits at n-1): exact, committed whatever happens.
  draft   k decoder steps (local encoder byte layer + local decoder, no entropy model, no
          global model) over x0, d_1, ..., d_{k-1} at positions n..n+k-1, every one reading the
          latent of the last closed patch L* (`state.lat_k/v`): d_1..d_k.
  verify  one incremental pass of the whole model (`extend`) over the Q = k+1 ids
          [x0, d_1..d_k] at positions n..n+k: entropy model, patch starts, pooling and the
          global model for every patch that closes inside (one multi-query causal step), the
          decoder with the exact latent rule. y_j = argmax at position n+j-1.
  accept  a = the longest prefix with d_j == y_j; commit x0, d_1..d_a (1 to k+1 ids). y_{a+1}
          is the next cycle's x0 (the correction byte, or the bonus byte when a = k).
  rewind  `commit` builds the state after position n+a from `extend`'s per-position results:
          rings keep every written key (their explicit positions hide the rejected ones from
          later queries until overwritten), the global cache keeps slots < n_closed.

The committed ids are exactly the greedy AR ids (`decoding.generate` with temperature 0) up to
floating-point summation order (the verify pass attends Q queries at once, the global step
densely): the test checks byte identity in fp32. NFEs per cycle (§7): n_dec += k + 1 (drafts
and the verify pass), n_enc += 1 (the verify pass, whether or not a patch closes in it).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from bltjax import decoding as D
from bltjax import model as M
from bltjax import patching
from bltjax.config import EOS_ID, BLTConfig
from bltjax.layers import MASK_VALUE


def _apply(params, cfg, fn, *args):
  return M.blt_module(cfg).apply({"params": M.blt_params(params)}, *args, method=fn)


def _encode(m, cfg: BLTConfig, hist_BxQxNh, pos_BxQ, write_BxQ, kv: D.KV):
  """Local-encoder byte states of Q new positions (hash n-grams from each one's id history)."""
  enc = m.local_encoder
  b, q, nh = hist_BxQxNh.shape
  hpos = pos_BxQ[..., None] - (nh - 1) + jnp.arange(nh)[None, None]
  e = enc.embed(hist_BxQxNh.reshape(b * q, nh), hpos.reshape(b * q, nh),
                hpos.reshape(b * q, nh) >= 0)[:, -1].reshape(b, q, -1)
  return D._step_layers(enc.layers, e, pos_BxQ, write_BxQ, kv, cfg.encoder.window)


def _decode(m, cfg: BLTConfig, h_BxQxD, pos_BxQ, write_BxQ, kv: D.KV, lat_k, lat_v):
  """Local decoder over Q positions; position j reads latent keys lat_k[:, :, j] ([L,B,Q,C,H,K])."""
  dec = m.local_decoder

  def cross(i, x):
    out = dec.cross_attn_layers[i].gathered(x, lat_k[i], lat_v[i])
    return x + out if cfg.cross_attn_residual == "double" else out

  x, kv = D._step_layers(dec.layers, h_BxQxD.astype(M.dtype_of(cfg.dtype)), pos_BxQ, write_BxQ,
                         kv, cfg.decoder.window, cross)
  return dec.head(x), kv


# ------------------------------------------------------------------------------------------------
# Draft.


def draft(params, cfg: BLTConfig, state: D.DecodeState, x0_B, k: int, active_B):
  """k greedy decoder steps from x0 reading the stale latent L*: (d [B, k], enc, dec rings).

  Writes speculative keys at positions n..n+k-1 of the encoder and decoder rings (the verify
  pass overwrites them); nothing else in `state` changes.
  """
  lat_k, lat_v = state.lat_k[:, :, None], state.lat_v[:, :, None]
  w = active_B[:, None]

  def body(carry, j):
    enc, dec, hist, x = carry
    hist = jnp.concatenate([hist[:, 1:], x[:, None]], axis=1)
    pos = (state.n + j)[:, None]

    def fn(m, hist, pos, enc, dec):
      h, enc = _encode(m, cfg, hist[:, None], pos, w, enc)
      logits, dec = _decode(m, cfg, h, pos, w, dec, lat_k, lat_v)
      return logits[:, 0], enc, dec

    logits, enc, dec = _apply(params, cfg, fn, hist, pos, enc, dec)
    d = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return (enc, dec, hist, d), d

  (enc, dec, _, _), d_KxB = jax.lax.scan(body, (state.enc, state.dec, state.hist,
                                               x0_B.astype(jnp.int32)), jnp.arange(k))
  return d_KxB.T, enc, dec


# ------------------------------------------------------------------------------------------------
# Verify: Q positions through the whole model at once.


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Extension:
  """`extend`'s result: the state with every stack written for Q positions (counters not yet
  advanced) and, per position j (= n + j), what `commit` needs to stop after it."""

  state: D.DecodeState
  ids: jax.Array  # [B, Q]
  logits: jax.Array  # [B, Q, V] next-byte logits at n + j
  H: jax.Array  # [B, Q]
  rule: jax.Array  # [B, Q] slot n+j+1 starts by the mode's rule
  start: jax.Array  # [B, Q] slot n+j+1 starts a patch (the patch holding n+j closes)
  open_len: jax.Array  # [B, Q] bytes of the open patch through n+j
  slot: jax.Array  # [B, Q] buffer slot of byte n+j in its patch
  first: jax.Array  # [B, Q] index (in 0..Q-1) where byte n+j's patch starts; -1: before n
  pmax: jax.Array  # [B, Q, De] running max of that patch through n+j
  hk: jax.Array  # [B, Q, Hx, Kx] pooling keys/values of the new bytes
  hv: jax.Array
  closed: jax.Array  # [B, Q] patches closed through n+j (cumulative)
  lat_k: jax.Array  # [Ld, B, Q, C, Hx, Kx] latent read at n+j
  lat_v: jax.Array


def _extend_impl(params, cfg: BLTConfig, state: D.DecodeState, ids_BxQ, active_B) -> Extension:
  cfg = D._dec_cfg(cfg)
  b, q = ids_BxQ.shape
  ids_BxQ = ids_BxQ.astype(jnp.int32)
  n = state.n
  pos = n[:, None] + jnp.arange(q, dtype=jnp.int32)[None]
  w = jnp.broadcast_to(active_B[:, None], (b, q))
  nh = state.hist.shape[1]
  all_ids = jnp.concatenate([state.hist, ids_BxQ], axis=1)  # [B, Nh + Q]
  hist_BxQxNh = jnp.stack([all_ids[:, j + 1:j + 1 + nh] for j in range(q)], axis=1)

  # 1. Entropy model over the Q ids.
  ent_kv, H = state.ent, jnp.zeros((b, q), jnp.float32)
  if cfg.entropy is not None:
    def ent_fn(m, ids, pos, kv):
      x, kv = D._step_layers(m.layers, m.embed(ids), pos, w, kv, m.cfg.window)
      return m.head(x), kv

    e_logits, ent_kv = M.entropy_module(cfg).apply(
      {"params": params["entropy_model"]}, ids_BxQ, pos, state.ent, method=ent_fn)
    H = patching.entropies_from_logits(e_logits)

  # 2. Local encoder byte states and their pooling keys/values.
  def enc_fn(m, hist, pos, kv):
    h, kv = _encode(m, cfg, hist, pos, w, kv)
    return h, kv, m.local_encoder.pool_kv(h)

  h_dec, enc_kv, (hk, hv) = _apply(params, cfg, enc_fn, hist_BxQxNh, pos, state.enc)
  h = h_dec.astype(state.patch_max.dtype)

  # 3. Patch bookkeeping, position by position (elementwise; Q is small and static).
  s_j = state.next_start
  length, pmax = state.patch_len, state.patch_max
  first = jnp.full((b,), -1, jnp.int32)
  H_prev, rule_prev, id_prev = state.H_last, state.rule_start, state.hist[:, -1]
  cols = {k: [] for k in ("rule", "start", "open_len", "slot", "first", "pmax")}
  for j in range(q):
    before = jnp.where(s_j, 0, length)
    first = jnp.where(s_j, j, first)
    pmax = jnp.where((before > 0)[:, None], jnp.maximum(pmax, h[:, j]), h[:, j])
    length = before + 1
    start, rule = patching.next_slot_starts(
      cfg.patcher, pos_B=n + j, open_len_B=length, H_B=H[:, j], H_prev_B=H_prev,
      rule_start_B=rule_prev, id_B=ids_BxQ[:, j], id_prev_B=id_prev)
    start &= active_B
    for key, val in (("rule", rule), ("start", start), ("open_len", length), ("slot", before),
                     ("first", first), ("pmax", pmax)):
      cols[key].append(val)
    s_j, H_prev, rule_prev, id_prev = start, H[:, j], rule, ids_BxQ[:, j]
  c = {k: jnp.stack(v, axis=1) for k, v in cols.items()}
  close = c["start"]
  closed = jnp.cumsum(close.astype(jnp.int32), axis=1)

  # 4. Pool every patch that closes at some j: its bytes are the open patch's cached bytes
  #    (when it began before n) and the new bytes first_j..j.
  cap = state.patch_k.shape[1]
  jj = jnp.arange(q)
  old_ok = (c["first"] < 0)[:, :, None] & (jnp.arange(cap)[None, None] < state.patch_len[:, None,
                                                                                        None])
  new_ok = ((jj[None, None] >= jnp.maximum(c["first"], 0)[:, :, None])
            & (jj[None, None] <= jj[None, :, None]))
  valid_BxQxT = jnp.concatenate([old_ok, new_ok], axis=2)
  keys = jnp.concatenate([state.patch_k, hk.astype(state.patch_k.dtype)], axis=1)
  vals = jnp.concatenate([state.patch_v, hv.astype(state.patch_v.dtype)], axis=1)
  gk, gv = D.flush_global(state)
  pslots = gk.shape[3]
  # Global slot (and RoPE position) of the patch closing at j, as generate_loop clamps it.
  pidx = jnp.minimum(state.n_closed[:, None] + closed - close.astype(jnp.int32), pslots - 1)

  def glob_fn(m, pmax_BxQxD, valid, pidx):
    t = keys.shape[1]
    bcast = lambda a: jnp.broadcast_to(a[:, None], (b, q, *a.shape[1:])).reshape(b * q,
                                                                                 *a.shape[1:])
    x_g = m.local_encoder.pool_one(pmax_BxQxD.reshape(b * q, -1), bcast(keys), bcast(vals),
                                   valid.reshape(b * q, t)).reshape(b, q, -1)
    g = m.global_transformer
    x = g.project_in(x_g)
    # Keys: the cache's closed patches, then the new patches closing at i <= j (self always
    # visible so that rows with nothing to close stay finite; their output is discarded).
    cache_ok = jnp.arange(pslots)[None, None] < state.n_closed[:, None, None]
    causal = jj[None, None] <= jj[None, :, None]
    new_ok = (close[:, None, :] & causal) | jnp.eye(q, dtype=bool)[None]
    mask = jnp.concatenate([jnp.broadcast_to(cache_ok, (b, q, pslots)), new_ok], axis=2)
    ks, vs = [], []
    for i, layer in enumerate(g.layers):
      qq, k, v = layer.attn_in(x, pidx)
      k_all = jnp.concatenate([gk[i], k.transpose(0, 2, 1, 3).astype(gk.dtype)], axis=2)
      v_all = jnp.concatenate([gv[i], v.transpose(0, 2, 1, 3).astype(gv.dtype)], axis=2)
      x = layer.attn_out(x, _attend_hm_masked(qq, k_all, v_all, mask))
      ks.append(k)
      vs.append(v)
    lk = m.local_decoder.latent_kv(x)
    return (jnp.stack(ks), jnp.stack(vs), jnp.stack([a for a, _ in lk]),
            jnp.stack([a for _, a in lk]))

  new_gk, new_gv, lk, lv = _apply(params, cfg, glob_fn, c["pmax"], valid_BxQxT, pidx)
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, q))
  wslot = jnp.where(close & active_B[:, None], pidx, pslots)  # out of range: dropped
  for i in range(gk.shape[0]):
    gk = gk.at[i, rows, :, wslot].set(new_gk[i].astype(gk.dtype), mode="drop")
    gv = gv.at[i, rows, :, wslot].set(new_gv[i].astype(gv.dtype), mode="drop")

  # 5. Latent read at each position: the newest patch closed at i <= j, else L*.
  last = jnp.max(jnp.where(close[:, None, :] & (jj[None, None] <= jj[None, :, None]),
                           jj[None, None], -1), axis=2)  # [B, Q]
  pick = lambda old, new: jnp.where(  # noqa: E731
    (last >= 0)[None, :, :, None, None, None],
    jnp.take_along_axis(new, jnp.maximum(last, 0)[None, :, :, None, None, None], axis=2),
    old[:, :, None])
  lat_k, lat_v = pick(state.lat_k, lk.astype(state.lat_k.dtype)), pick(state.lat_v,
                                                                        lv.astype(state.lat_v.dtype))

  # 6. Local decoder over the Q positions.
  logits, dec_kv = _apply(params, cfg, lambda m, *a: _decode(m, cfg, *a), h_dec, pos, w,
                          state.dec, lat_k, lat_v)
  st = dataclasses.replace(state, ent=ent_kv, enc=enc_kv, dec=dec_kv, glob_k=gk, glob_v=gv,
                           pend_idx=jnp.full((b,), pslots, jnp.int32))
  return Extension(state=st, ids=ids_BxQ, logits=logits, H=H, rule=c["rule"], start=close,
                   open_len=c["open_len"], slot=c["slot"], first=c["first"], pmax=c["pmax"],
                   hk=hk, hv=hv, closed=closed, lat_k=lat_k, lat_v=lat_v)


def _attend_hm_masked(q_BxQxHxK, k_BxGxTxK, v_BxGxTxK, mask_BxQxT):
  """Dense multi-query attention over a head-major key set (the global verify step)."""
  b, q, h, kd = q_BxQxHxK.shape
  g = k_BxGxTxK.shape[1]
  qr = q_BxQxHxK.reshape(b, q, g, h // g, kd).transpose(0, 2, 3, 1, 4).astype(jnp.float32)
  s = jnp.einsum("bgrqk,bgtk->bgrqt", qr, k_BxGxTxK.astype(jnp.float32)) / np.sqrt(kd)
  m = mask_BxQxT[:, None, None]
  p = jax.nn.softmax(jnp.where(m, s, MASK_VALUE), axis=-1)
  p = jnp.where(m, p, 0.0)
  o = jnp.einsum("bgrqt,bgtk->bqgrk", p, v_BxGxTxK.astype(jnp.float32))
  return o.reshape(b, q, h, kd).astype(v_BxGxTxK.dtype)


extend = jax.jit(_extend_impl, static_argnames=("cfg",))


def _commit_impl(ext: Extension, a_B, active_B) -> D.DecodeState:
  """The decoding state after positions n..n+a_B (ids ext.ids[:, :a+1]) for active rows."""
  st = ext.state
  b, q = ext.ids.shape
  a = jnp.clip(a_B, 0, q - 1).astype(jnp.int32)
  at = lambda x: jnp.take_along_axis(  # noqa: E731
    x, a.reshape((b, 1) + (1,) * (x.ndim - 2)), axis=1)[:, 0]
  keep = lambda new, old: jnp.where(  # noqa: E731
    active_B.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
  nh = st.hist.shape[1]
  all_ids = jnp.concatenate([st.hist, ext.ids], axis=1)
  hist = jax.vmap(lambda r, i: jax.lax.dynamic_slice(r, (i,), (nh,)))(all_ids, a + 1)
  # The open patch's buffer after position n+a: its new bytes first_a..a at their slots.
  jj = jnp.arange(q)[None]
  wr = (jj >= jnp.maximum(at(ext.first), 0)[:, None]) & (jj <= a[:, None]) & active_B[:, None]
  cap = st.patch_k.shape[1]
  slot = jnp.where(wr, ext.slot, cap)
  rows = jnp.broadcast_to(jnp.arange(b)[:, None], (b, q))
  pk = st.patch_k.at[rows, slot].set(ext.hk.astype(st.patch_k.dtype), mode="drop")
  pv = st.patch_v.at[rows, slot].set(ext.hv.astype(st.patch_v.dtype), mode="drop")
  lat_at = lambda x: jnp.take_along_axis(  # noqa: E731
    x, a[None, :, None, None, None, None], axis=2)[:, :, 0]
  return dataclasses.replace(
    st, n_closed=keep(st.n_closed + at(ext.closed), st.n_closed),
    patch_max=keep(at(ext.pmax), st.patch_max), patch_k=pk, patch_v=pv,
    patch_len=keep(at(ext.open_len), st.patch_len),
    lat_k=keep(lat_at(ext.lat_k).swapaxes(0, 1), st.lat_k.swapaxes(0, 1)).swapaxes(0, 1),
    lat_v=keep(lat_at(ext.lat_v).swapaxes(0, 1), st.lat_v.swapaxes(0, 1)).swapaxes(0, 1),
    n=st.n + jnp.where(active_B, a + 1, 0), hist=keep(hist, st.hist),
    H_last=keep(at(ext.H), st.H_last), rule_start=keep(at(ext.rule), st.rule_start),
    next_start=keep(at(ext.start), st.next_start), logits=keep(at(ext.logits), st.logits))


commit = jax.jit(_commit_impl)


# ------------------------------------------------------------------------------------------------
# The BLT-S loop.


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class SpecState:
  dstate: D.DecodeState
  out: jax.Array  # [B, max_new + Q]
  n_new: jax.Array
  done: jax.Array
  reason: jax.Array
  nfe_dec: jax.Array
  nfe_enc: jax.Array
  cycles: jax.Array  # [B] verification passes
  drafted: jax.Array  # [B] draft bytes proposed
  accepted: jax.Array  # [B] draft bytes accepted (d_j == y_j prefix)
  agree: jax.Array  # [B] draft positions equal to the verifier's byte, anywhere in the window
  step: jax.Array


def init_spec_state(dstate: D.DecodeState, budget_B, max_new: int, q: int) -> SpecState:
  b = budget_B.shape[0]
  z = lambda: jnp.zeros((b,), jnp.int32)  # noqa: E731
  return SpecState(dstate=dstate, out=jnp.zeros((b, max_new + q), jnp.int32), n_new=z(),
                   done=budget_B <= 0,
                   reason=jnp.where(budget_B <= 0, D.STOP_LENGTH, D.STOP_NONE).astype(jnp.int32),
                   nfe_dec=z(), nfe_enc=z(), cycles=z(), drafted=z(), accepted=z(), agree=z(),
                   step=jnp.zeros((), jnp.int32))


def verify_and_commit(params, cfg: BLTConfig, g: SpecState, d: D.DecodeState, x0_B, drafts_BxK,
                      draft_nfe_B, budget_B, stop_ids_NxL, stop_len_N, eos_id) -> SpecState:
  """One verification (shared by BLT-S and BLT-DV): `extend` over [x0, drafts], commit the
  longest verified prefix (stopping at EOS, a stop string, the budget or the global cache as
  generate_loop would) and count NFEs: decoder draft_nfe + 1, encoder+global 1.

  `d` is `g.dstate` with the drafts' speculative ring writes; x0 is the exact next id.
  """
  k = drafts_BxK.shape[1]
  active = ~g.done
  ids = jnp.concatenate([x0_B[:, None], drafts_BxK], axis=1)  # [B, Q]
  ext = _extend_impl(params, cfg, d, ids, active)
  y = jnp.argmax(ext.logits, axis=-1).astype(jnp.int32)  # y[:, j] predicts id j + 1
  match = drafts_BxK == y[:, :k]
  acc = jnp.sum(jnp.cumprod(match.astype(jnp.int32), axis=1), axis=1)
  g2 = commit_window(g, d, ext, ids, acc, budget_B, stop_ids_NxL, stop_len_N, eos_id)
  ai = active.astype(jnp.int32)
  return dataclasses.replace(
    g2, nfe_dec=g.nfe_dec + ai * (draft_nfe_B + 1), nfe_enc=g.nfe_enc + ai,
    drafted=g.drafted + ai * k, accepted=g.accepted + ai * acc,
    agree=g.agree + ai * jnp.sum(match.astype(jnp.int32), axis=1))


def commit_window(g: SpecState, d: D.DecodeState, ext: Extension, ids_BxQ, limit_B, budget_B,
                  stop_ids_NxL, stop_len_N, eos_id) -> SpecState:
  """Commits ids 0..limit_B of an `extend`ed window, cut at the first event, checked per id in
  generate_loop's order: EOS, a stop string, the budget, the global cache (the id's patch would
  need a slot past the cache). Advances out / n_new / done / reason / cycles / step."""
  q = ids_BxQ.shape[1]
  pmax = d.glob_k.shape[3]
  active = ~g.done
  jj = jnp.arange(q)[None]
  out = g.out
  for j in range(q):  # ids past the commit are overwritten by later cycles
    out = jax.vmap(lambda o, i, t: o.at[i].set(t, mode="drop"))(
      out, jnp.where(active & (j <= limit_B), g.n_new + j, out.shape[1]), ids_BxQ[:, j])
  eos_j = ids_BxQ == eos_id
  hit_j = jnp.stack([D._stop_hit(out, g.n_new + j + 1, stop_ids_NxL, stop_len_N)
                     for j in range(q)], axis=1) & ~eos_j
  full_j = (g.n_new[:, None] + jj + 1 >= budget_B[:, None]) & ~eos_j & ~hit_j
  closed_before = d.n_closed[:, None] + ext.closed - ext.start.astype(jnp.int32)
  ctx_j = (closed_before >= pmax - 1) & ~eos_j & ~hit_j & ~full_j
  ev_j = (eos_j | hit_j | full_j | ctx_j) & (jj <= limit_B[:, None])
  stop = active & jnp.any(ev_j, axis=1)
  a = jnp.where(stop, jnp.argmax(ev_j, axis=1), limit_B)
  at_a = lambda x: jnp.take_along_axis(x, a[:, None], axis=1)[:, 0]  # noqa: E731
  reason = g.reason
  for flag, code in ((ctx_j, D.STOP_CONTEXT), (full_j, D.STOP_LENGTH),
                     (hit_j, D.STOP_STRING), (eos_j, D.STOP_EOS)):
    reason = jnp.where(stop & at_a(flag), code, reason)
  ai = active.astype(jnp.int32)
  return dataclasses.replace(
    g, dstate=_commit_impl(ext, a, active), out=out, n_new=g.n_new + jnp.where(active, a + 1, 0),
    done=g.done | stop, reason=reason, cycles=g.cycles + ai, step=g.step + 1)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new", "k"), donate_argnames=("dstate",))
def blts_loop(params, cfg: BLTConfig, dstate: D.DecodeState, budget_B, max_new: int, k: int,
              stop_ids_NxL, stop_len_N, eos_id=EOS_ID):
  """Greedy BLT-S until every row is done: the ids equal `decoding.generate_loop`'s greedy ids."""
  cfg = D._dec_cfg(cfg)

  def body(g):
    d = g.dstate
    x0 = jnp.argmax(d.logits, axis=-1).astype(jnp.int32)
    drafts, enc, dec = draft(params, cfg, d, x0, k, ~g.done)
    d = dataclasses.replace(d, enc=enc, dec=dec)
    return verify_and_commit(params, cfg, g, d, x0, drafts, jnp.full_like(x0, k), budget_B,
                             stop_ids_NxL, stop_len_N, eos_id)

  return jax.lax.while_loop(lambda g: (g.step < max_new) & ~jnp.all(g.done), body,
                            init_spec_state(dstate, budget_B, max_new, k + 1))


@dataclasses.dataclass
class SpecGeneration(D.Generation):
  cycles: int = 0
  drafted: int = 0
  accepted: int = 0
  agree: int = 0

  @property
  def acceptance(self) -> float:
    """(a) accepted draft bytes / drafted bytes (fast_blt §10 #10)."""
    return self.accepted / max(self.drafted, 1)

  @property
  def agreement(self) -> float:
    """(b) position-wise agreement of draft and verifier over all drafted positions."""
    return self.agree / max(self.drafted, 1)


def generate(params, cfg: BLTConfig, prompts: list[bytes], *, max_new: int, k: int = 8,
             stops: tuple[bytes, ...] = (), budgets: list[int] | None = None,
             max_patches: int | None = None, patch_cap: int = 512, batch_bucket: bool = True,
             stop_at_eos: bool = True) -> list[SpecGeneration]:
  """Greedy BLT-S generation with window k (same arguments and results as `decoding.generate`
  with temperature 0, plus cycle and acceptance counts)."""
  if k < 1:
    raise ValueError(f"k: the draft window must be >= 1, got {k}")
  # Rings hold k more slots: a verify pass writes k + 1 positions past the committed ones.
  st, budget, pre_patches = D.prepare(params, cfg, prompts, max_new=max_new, budgets=budgets,
                                      max_patches=max_patches, patch_cap=patch_cap,
                                      batch_bucket=batch_bucket, ring_extra=k)
  g = blts_loop(params, cfg, st, jnp.asarray(budget), max_new, k, *D.stop_arrays(stops),
                jnp.asarray(EOS_ID if stop_at_eos else -1, jnp.int32))
  g = jax.device_get(g)
  res = []
  for i in range(len(prompts)):
    r = D.STOP_NAMES[int(g.reason[i])]
    toks = D.trim(g.out[i, :g.n_new[i]].tolist(), r, stops)
    cyc = int(g.cycles[i])  # one verification (entropy model included) each; k drafted bytes
    res.append(SpecGeneration(toks, r, int(g.nfe_dec[i]), int(g.nfe_enc[i]), int(pre_patches[i]),
                              nfe_ent=cyc if cfg.entropy is not None else 0,
                              nfe_enc_byte=int(g.drafted[i]), cycles=cyc,
                              drafted=int(g.drafted[i]), accepted=int(g.accepted[i]),
                              agree=int(g.agree[i])))
  return res


__all__ = ["draft", "extend", "commit", "Extension", "blts_loop", "generate", "SpecGeneration"]
