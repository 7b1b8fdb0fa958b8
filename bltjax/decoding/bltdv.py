"""BLT-DV: BLT-D diffusion drafts verified by one causal pass (arXiv 2605.08044 §3.3;
docs/decoding.md).

Per cycle: x0 = argmax of the known logits (exact); x0 runs through the local encoder and decoder
as a clean position at n (`engine.draft_step`, reading L* = the last closed latent, "last_valid"),
so the block at n+1 sees it in its prefix; a block of Z ids at n+1 is denoised by the BLT-D rule
(`bltd.denoise`) with L*; then `blts.verify` checks [x0, block] with one causal forward and
commits the longest verified prefix plus the verifier's byte. The output is the greedy causal
decoding of the same BLT-D weights. With a temperature, drafts are sampled (one-step rule only:
each position is drawn independently from its distribution q at the single denoising step, which
is what speculative sampling needs) and verified by `sampling.accept`, so the output follows the
causal model's warped distribution exactly. Counters: decoder NFE += steps + 1 and encoder+global
NFE += 1 per cycle as the paper counts them; the passes add x0's decoder pass.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from bltjax.config import BLTConfig
from bltjax.decoding import bltd, blts, engine, runloop, sampling


def cycle(params, cfg: BLTConfig, g: runloop.GenState, ctx: runloop.LoopArgs, opts):
  rule = opts
  st = g.state
  active = ~g.done
  x0 = blts.first_byte(g, ctx)
  hist = jnp.concatenate([st.hist[:, 1:], x0[:, None]], axis=1)
  _, enc, dec = engine.draft_step(params, cfg, st, st.n, hist, st.lat_k, st.lat_v, active)
  st = dataclasses.replace(st, enc=enc, dec=dec)
  drafts, steps, logits = bltd.denoise(params, cfg, dataclasses.replace(st, hist=hist),
                                       st.n + 1, st.lat_k, st.lat_v, rule, ctx, active)
  z = drafts.shape[1]
  enc_states = cfg.diffusion.block_input == "encoder_states"
  extra = engine.passes(decoder=1 + steps, encoder=1 + steps * enc_states)
  q = sampling.window_probs(logits, ctx) if ctx.sampled else None
  g2 = blts.verify(params, cfg, g, st, x0, drafts, jnp.full_like(steps, z), ctx, extra, q)
  # The paper counts steps + 1 decoder NFEs (drafts and the verification), as BLT-S does.
  return runloop.count(g2, active, dec=steps - z)


__all__ = ["cycle"]
