"""BLT-S self-speculative greedy decoding (arXiv 2605.08044 §3, Algorithm 2; docs/decoding.md).

Each cycle, per row with n committed ids whose next-byte logits are known:

  x0      = argmax(logits at n-1): exact, committed whatever happens.
  draft   up to k decoder steps (`engine.draft_step`: the local encoder byte layer and the local
          decoder, no entropy model, no global model) over x0, d_1, ... at positions n, n+1, ...,
          every one reading the latent of the last closed patch L*. Drafting stops early where
          the generation would end: after an EOS, a stop string's last byte, or the byte budget.
  verify  one `engine.forward` over [x0, d_1..d_L] (entropy model, patching, the global model
          for every patch that closes inside, the decoder with the exact latent rule):
          y_j = argmax at position n+j-1.
  accept  a = the longest prefix with d_j == y_j; x0, d_1..d_a are committed (cut at a stop
          event by `runloop.take`); y_{a+1} is the next cycle's x0.

The committed ids are exactly greedy AR's (up to floating-point summation order; the tests check
byte identity in fp32). Sampled, drafts are drawn and accepted by speculative sampling
(`sampling.accept`), so the committed bytes follow AR's distribution exactly. Counters: decoder
NFE += L + 1, encoder+global NFE += 1 per cycle.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bltjax.config import BLTConfig
from bltjax.decoding import engine, runloop, sampling


def draft(params, cfg: BLTConfig, g: runloop.GenState, x0_B, k: int, ctx: runloop.LoopArgs):
  """Drafts from x0 with the stale latent: (drafts [B, k], lengths L [B], q [B, k, V] the
  distribution each draft was drawn from (None when greedy), state with the drafts'
  speculative ring writes). A row drafts while its bytes so far do not end it, so no decoder
  step runs for a byte that could never be committed, and (with ctx.tau > 0) stops after a
  draft whose max probability is below tau."""
  st = g.state
  b = x0_B.shape[0]
  v = st.logits.shape[-1]
  # The row's generation with x0 and the drafts appended (a scratch copy of `out`).
  out = jnp.concatenate([g.out, jnp.zeros((b, k + 1), jnp.int32)], axis=1)

  def goes_on(out, j, x, drafting):
    """x is byte n_new + j of the generation (written into out): may drafting continue?"""
    out = runloop.write_out(out, g.n_new + j - 1, x[:, None], drafting[:, None])
    ends = runloop.ends_generation(out, g.n_new + j, x, ctx.budget, ctx)
    return out, drafting & ~(ends[0] | ends[1] | ends[2]) & (j <= k)

  def body(c):
    j, enc, dec, hist, x, drafting, length, drafts, q_all, out = c
    hist = jnp.concatenate([hist[:, 1:], x[:, None]], axis=1)
    logits, enc, dec = engine.draft_step(params, cfg, dataclasses.replace(st, enc=enc, dec=dec),
                                         st.n + j - 1, hist, st.lat_k, st.lat_v, drafting)
    d, q, conf = sampling.draft_byte(logits, st.n + j, ctx)
    if q is not None:
      q_all = q_all.at[:, j - 1].set(q)
    d = jnp.where(drafting, d, 0)
    drafts = drafts.at[:, j - 1].set(d)
    length = length + drafting.astype(jnp.int32)
    out, go = goes_on(out, j + 1, d, drafting)
    return j + 1, enc, dec, hist, d, go & (conf >= ctx.tau), length, drafts, q_all, out

  out, drafting = goes_on(out, 1, x0_B, ~g.done)
  q0 = jnp.zeros((b, k if ctx.sampled else 0, v), jnp.float32)
  c0 = (jnp.ones((), jnp.int32), st.enc, st.dec, st.hist, x0_B, drafting,
        jnp.zeros((b,), jnp.int32), jnp.zeros((b, k), jnp.int32), q0, out)
  c = jax.lax.while_loop(lambda c: jnp.any(c[5]), body, c0)
  return c[7], c[6], (c[8] if ctx.sampled else None), dataclasses.replace(st, enc=c[1], dec=c[2])


def verify(params, cfg: BLTConfig, g: runloop.GenState, st: engine.State, x0_B, drafts_BxK,
           length_B, ctx: runloop.LoopArgs, draft_passes_Bx4, q_BxKxV=None) -> runloop.GenState:
  """One verification (BLT-S and BLT-DV): `forward` over [x0, drafts[:length]], commit the
  accepted prefix (`sampling.accept`); the byte after it is the verifier's (greedy: the next cycle's
  argmax; sampled: the carried correction, or a fresh draw for the bonus). Counts NFEs
  (decoder: drafts + 1, encoder+global: 1) and passes."""
  k = drafts_BxK.shape[1]
  active = ~g.done
  jj = jnp.arange(k + 1)[None]
  ids = jnp.concatenate([x0_B[:, None], drafts_BxK], axis=1)
  valid = active[:, None] & (jj <= length_B[:, None])
  ext = engine.forward(params, cfg, st, ids, valid)
  acc, ok, fix = sampling.accept(ext.logits[:, :k], drafts_BxK, q_BxKxV, length_B,
                                 ext.state.n, ctx)
  si = ext.start.astype(jnp.int32)
  closed_before = st.n_closed[:, None] + jnp.cumsum(si, axis=1) - si
  g2, a, _ = runloop.take(g, ids, acc, closed_before, ctx)
  g2 = dataclasses.replace(g2, state=engine.commit(ext, a, active))
  if fix is not None:
    g2 = dataclasses.replace(g2, carry_tok=jnp.where(active, fix, g.carry_tok),
                             carry=jnp.where(active, acc < length_B, g.carry))
  return runloop.count(g2, active, dec=length_B + 1, enc_global=1,
                       passes=ext.passes + draft_passes_Bx4, drafted=length_B, accepted=acc,
                       agree=jnp.sum(ok.astype(jnp.int32), axis=1))


def first_byte(g: runloop.GenState, ctx: runloop.LoopArgs):
  """x0, the exact byte at position n (`sampling.first_byte`)."""
  st = g.state
  return sampling.first_byte(st.logits, st.n, g.carry, g.carry_tok, ctx)


def cycle(params, cfg: BLTConfig, g: runloop.GenState, ctx: runloop.LoopArgs, opts):
  k = opts
  x0 = first_byte(g, ctx)
  drafts, length, q, st = draft(params, cfg, g, x0, k, ctx)
  draft_passes = engine.passes(decoder=length, encoder=length)  # + the encoder byte layer
  return verify(params, cfg, g, st, x0, drafts, length, ctx, draft_passes, q)


__all__ = ["draft", "verify", "cycle", "first_byte"]
