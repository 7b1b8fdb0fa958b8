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
byte identity in fp32). Counters: decoder NFE += L + 1, encoder+global NFE += 1 per cycle.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bltjax import engine, runloop
from bltjax.config import BLTConfig


def draft(params, cfg: BLTConfig, g: runloop.GenState, x0_B, k: int, ctx: runloop.LoopArgs):
  """Greedy drafts from x0 with the stale latent: (drafts [B, k], lengths L [B], state with the
  drafts' speculative ring writes). A row drafts while its bytes so far do not end it, so no
  decoder step runs for a byte that could never be committed."""
  st = g.state
  b = x0_B.shape[0]
  # The row's generation with x0 and the drafts appended (a scratch copy of `out`).
  out = jnp.concatenate([g.out, jnp.zeros((b, k + 1), jnp.int32)], axis=1)

  def goes_on(out, j, x, drafting):
    """x is byte n_new + j of the generation (written into out): may drafting continue?"""
    out = runloop.write_out(out, g.n_new + j - 1, x[:, None], drafting[:, None])
    ends = runloop.ends_generation(out, g.n_new + j, x, ctx.budget, ctx)
    return out, drafting & ~(ends[0] | ends[1] | ends[2]) & (j <= k)

  def body(c):
    j, enc, dec, hist, x, drafting, length, drafts, out = c
    hist = jnp.concatenate([hist[:, 1:], x[:, None]], axis=1)
    logits, enc, dec = engine.draft_step(params, cfg, dataclasses.replace(st, enc=enc, dec=dec),
                                         st.n + j - 1, hist, st.lat_k, st.lat_v, drafting)
    d = jnp.where(drafting, jnp.argmax(logits, axis=-1).astype(jnp.int32), 0)
    drafts = drafts.at[:, j - 1].set(d)
    length = length + drafting.astype(jnp.int32)
    out, drafting = goes_on(out, j + 1, d, drafting)
    return j + 1, enc, dec, hist, d, drafting, length, drafts, out

  out, drafting = goes_on(out, 1, x0_B, ~g.done)
  c0 = (jnp.ones((), jnp.int32), st.enc, st.dec, st.hist, x0_B, drafting,
        jnp.zeros((b,), jnp.int32), jnp.zeros((b, k), jnp.int32), out)
  c = jax.lax.while_loop(lambda c: jnp.any(c[5]), body, c0)
  return c[7], c[6], dataclasses.replace(st, enc=c[1], dec=c[2])


def verify(params, cfg: BLTConfig, g: runloop.GenState, st: engine.State, x0_B, drafts_BxK,
           length_B, ctx: runloop.LoopArgs, draft_passes_Bx4) -> runloop.GenState:
  """One verification (BLT-S and BLT-DV): `forward` over [x0, drafts[:length]], commit the
  longest verified prefix and the verifier's next byte; count NFEs (decoder: drafts + 1,
  encoder+global: 1) and passes."""
  k = drafts_BxK.shape[1]
  active = ~g.done
  jj = jnp.arange(k + 1)[None]
  ids = jnp.concatenate([x0_B[:, None], drafts_BxK], axis=1)
  valid = active[:, None] & (jj <= length_B[:, None])
  ext = engine.forward(params, cfg, st, ids, valid)
  y = jnp.argmax(ext.logits, axis=-1).astype(jnp.int32)  # y[:, j] predicts id j + 1
  match = (drafts_BxK == y[:, :k]) & (jj[:, :k] < length_B[:, None])
  acc = jnp.sum(jnp.cumprod(match.astype(jnp.int32), axis=1), axis=1)
  si = ext.start.astype(jnp.int32)
  closed_before = st.n_closed[:, None] + jnp.cumsum(si, axis=1) - si
  g2, a, _ = runloop.take(g, ids, acc, closed_before, ctx)
  g2 = dataclasses.replace(g2, state=engine.commit(ext, a, active))
  return runloop.count(g2, active, dec=length_B + 1, enc_global=1,
                       passes=ext.passes + draft_passes_Bx4, drafted=length_B, accepted=acc,
                       agree=jnp.sum(match.astype(jnp.int32), axis=1))


def cycle(params, cfg: BLTConfig, g: runloop.GenState, ctx: runloop.LoopArgs, opts):
  (k,) = opts
  x0 = jnp.argmax(g.state.logits, axis=-1).astype(jnp.int32)
  drafts, length, st = draft(params, cfg, g, x0, k, ctx)
  zero = jnp.zeros_like(length)
  draft_passes = jnp.stack([length, zero, length, zero], axis=1)  # decoder + encoder byte layer
  return verify(params, cfg, g, st, x0, drafts, length, ctx, draft_passes)


__all__ = ["draft", "verify", "cycle"]
