"""BLT-D block-diffusion decoding (arXiv 2605.08044 §3.2 and §4; docs/decoding.md).

Per cycle, with n committed ids:
  latent   the block latent L: the latent of the patch holding byte n-1, pooled over the bytes
           it has ("partial_last_patch", docs/choices.md): `state.open_k/v`, which the engine's
           previous forward computed at its last position (no extra global pass).
           "force_boundary" instead closes that patch for good at the block start
           (`engine.close_open_patch`).
  denoise  Z positions n..n+Z-1 start as [MASK]; each step runs the local decoder over the block
           only (bidirectional within it, cross-attending L, causal onto the clean decoder ring
           within diffusion.block_prefix_window of the block start) and commits masked positions
           by the rule: confidence α, entropy-bounded γ (EB-sampler, arXiv 2505.24857) or one
           step. Values are greedy, or sampled per position.
  commit   the Z ids (cut at a stop event) go through one `engine.forward` (entropy model,
           patching, encoder, global for the patches that close and the open one, decoder).
Counters: decoder NFE += denoising steps, encoder+global NFE += 1 per block; the passes also
count the commit forward's decoder pass, which the paper fuses into the next block's first step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from bltjax.config import MASK_ID, BLTConfig
from bltjax.decoding import engine, runloop, sampling
from bltjax.decoding.options import BLOCK_LATENTS, EB_RULES, RULES
from bltjax.modeling import model, patching
from bltjax.modeling.layers import CacheKeys, attending


@dataclasses.dataclass(frozen=True)
class BlockRule:
  """Which masked positions a denoising step commits (arXiv 2605.08044 §4)."""

  kind: str = "confidence"  # "confidence" (α) | "entropy" (EB, γ) | "one_step"
  alpha: float = 0.7
  gamma: float = 1.5
  eb_rule: str = "sum_minus_max"  # | "cumulative"

  def __post_init__(self):
    if self.kind not in RULES:
      raise ValueError(f"rule.kind: unknown {self.kind!r} ({' | '.join(RULES)})")
    if self.eb_rule not in EB_RULES:
      raise ValueError(f"rule.eb_rule: unknown {self.eb_rule!r}")
    if not 0 <= self.alpha < 1:
      raise ValueError(f"rule.alpha: must be in [0, 1), got {self.alpha}")
    if self.gamma < 0:
      raise ValueError(f"rule.gamma: must be >= 0, got {self.gamma}")


def check_supported(cfg: BLTConfig) -> None:
  engine.check_supported(cfg)
  d = cfg.diffusion
  if not d.enabled:
    raise ValueError("diffusion.block_size: the checkpoint is a plain BLT (block_size 0); BLT-D "
                     "and BLT-DV need BLT-D weights")
  wb = d.block_prefix_window
  stacks = [("decoder", cfg.decoder)]
  if d.block_input == "encoder_states":
    stacks.append(("encoder", cfg.encoder))
  for key, st in stacks:
    if st.window is not None and (wb is None or wb > st.window):
      raise ValueError(f"diffusion.block_prefix_window: {wb} keys exceed the {key} ring "
                       f"({key}.window {st.window}); decoding keeps only that window")


def commit_mask(logits_BxZxV, masked_BxZ, kind: str, alpha=0.7, gamma=1.5,
                eb_rule: str = "sum_minus_max"):
  """Masked positions to commit this step (at least one per row that has any). `kind` and
  `eb_rule` are static; α and γ may be traced (one compilation for every value)."""
  p = jax.nn.softmax(logits_BxZxV.astype(jnp.float32), axis=-1)
  any_masked = jnp.any(masked_BxZ, axis=1, keepdims=True)
  if kind == "one_step":
    return masked_BxZ
  if kind == "confidence":
    c = jnp.where(masked_BxZ, jnp.max(p, axis=-1), -1.0)
    best = jax.nn.one_hot(jnp.argmax(c, axis=1), c.shape[1], dtype=bool)
    pick = masked_BxZ & (c > alpha)
    return jnp.where(jnp.any(pick, axis=1, keepdims=True), pick, best & any_masked)
  h = jnp.where(masked_BxZ, patching.entropies_from_logits(logits_BxZxV), jnp.inf)
  order = jnp.argsort(h, axis=1, stable=True)  # ascending entropy; unmasked last
  hs = jnp.take_along_axis(h, order, axis=1)
  ok_sorted = jnp.isfinite(hs)
  csum = jnp.cumsum(jnp.where(ok_sorted, hs, 0.0), axis=1)
  bound = csum - hs if eb_rule == "sum_minus_max" else csum  # sorted: max_U h = last
  take = ok_sorted & (bound <= gamma)
  take = take.at[:, 0].set(ok_sorted[:, 0])  # always at least one
  take = jnp.cumprod(take.astype(jnp.int32), axis=1).astype(bool)  # a prefix
  inv = jnp.argsort(order, axis=1)
  return jnp.take_along_axis(take, inv, axis=1) & masked_BxZ


def prefix_keys(ring: engine.Ring, start_B, z: int, window: int | None) -> CacheKeys:
  """A ring as a block's prefix: keys with start - W <= pos < start, the same for all Z
  positions (the window is measured from the block start, docs/choices.md)."""
  rel = start_B[:, None] - ring.pos
  ok = (ring.pos >= 0) & (rel >= 1)
  if window is not None:
    ok &= rel <= window
  return CacheKeys(ring.k, ring.v, jnp.broadcast_to(ok[:, None], (ok.shape[0], z, ok.shape[1])))


def block_logits(params, cfg: BLTConfig, st: engine.State, ids_BxZ, start_B, lat_k, lat_v):
  """Decoder logits of one block per row at positions start..start+Z-1 ([B, Z, 260]).

  Block inputs are the byte table ("tok_embeddings") or the local encoder over the block
  ("encoder_states": hash n-grams over the committed ids before it, the encoder ring as prefix);
  every decoder layer cross-attends lat_k/v [Ld, B, C, Hx, Kx] and attends the clean decoder
  ring within the block prefix window plus the whole block. Nothing is written.
  """
  b, z = ids_BxZ.shape
  pos = start_B[:, None] + jnp.arange(z, dtype=jnp.int32)[None]
  wb = cfg.diffusion.block_prefix_window
  every = jnp.ones((b, z, z), bool)

  g = model.block_context(cfg)

  def run(m, ids):
    enc = m.local_encoder
    x = enc.embed_block(ids, pos, jnp.ones((b, z), bool), st.hist[:, st.hist.shape[1] - g:],
                        jnp.ones((b, g), bool))
    if cfg.diffusion.block_input == "encoder_states":
      x, _ = enc.states(x, pos, attending(every, prefix_keys(st.enc, start_B, z, wb)))
    return m.local_decoder.logits(x, pos, attending(every, prefix_keys(st.dec, start_B, z, wb)),
                                  lambda i: (lat_k[i][:, None], lat_v[i][:, None]))[0]

  return model.apply_blt(params, cfg, run, ids_BxZ)


def denoise(params, cfg: BLTConfig, st: engine.State, start_B, lat_k, lat_v, rule: tuple,
            ctx: runloop.LoopArgs, active_B):
  """Block denoising from all-[MASK]: (ids [B, Z], decoder steps [B], the logits each position
  was committed from [B, Z, V]). `rule` = (kind, eb_rule); α and γ come from ctx. Values are
  greedy, or (`ctx.sampled`) drawn per position from the row key folded with the position and the
  row's own step count (batch-independent)."""
  b, z = start_B.shape[0], cfg.diffusion.block_size
  kind, eb_rule = rule

  def values(logits_BxZxV, steps_B):
    if not ctx.sampled:
      return jnp.argmax(logits_BxZxV, axis=-1).astype(jnp.int32)
    pos = start_B[:, None] + jnp.arange(z)[None]
    rep = lambda x: jnp.repeat(x, z, axis=0)  # noqa: E731
    keys = sampling.keys_at(rep(ctx.keys), pos.reshape(b * z), rep(steps_B))
    drawn = sampling.sample(logits_BxZxV.reshape(b * z, -1), keys, rep(ctx.temperature),
                            rep(ctx.top_k), rep(ctx.top_p))
    return drawn.reshape(b, z)

  def cond(c):
    ids, steps, _ = c
    return jnp.any(active_B & jnp.any(ids == MASK_ID, axis=1)) & (jnp.max(steps) < z)

  def body(c):
    ids, steps, at_commit = c
    masked = (ids == MASK_ID) & active_B[:, None]
    engine.tick("decoder", masked)
    if cfg.diffusion.block_input == "encoder_states":
      engine.tick("encoder", masked)
    logits = block_logits(params, cfg, st, ids, start_B, lat_k, lat_v)
    pick = commit_mask(logits, masked, kind, ctx.alpha, ctx.gamma, eb_rule)
    ids = jnp.where(pick, values(logits, steps), ids)
    at_commit = jnp.where(pick[..., None], logits, at_commit)
    return ids, steps + jnp.any(masked, axis=1).astype(jnp.int32), at_commit

  return jax.lax.while_loop(cond, body, (jnp.full((b, z), MASK_ID, jnp.int32),
                                         jnp.zeros((b,), jnp.int32),
                                         jnp.zeros((b, z, cfg.vocab_size), jnp.float32)))


def cycle(params, cfg: BLTConfig, g: runloop.GenState, ctx: runloop.LoopArgs, opts):
  rule, block_latent = opts
  st = g.state
  active = ~g.done
  z = cfg.diffusion.block_size
  enc_states = cfg.diffusion.block_input == "encoder_states"
  closed = jnp.zeros_like(active)
  if block_latent == "force_boundary":
    st, closed = engine.close_open_patch(params, cfg, st, active)
  ids, steps, _ = denoise(params, cfg, st, st.n, st.open_k, st.open_v, rule, ctx, active)
  # BLT-D keeps its own ids (no verification): one forward caches them and computes the next
  # block's latent at its last position.
  ext = engine.forward(params, cfg, st, ids, jnp.broadcast_to(active[:, None], ids.shape),
                       open_latent=True)
  si = ext.start.astype(jnp.int32)
  closed_before = st.n_closed[:, None] + jnp.cumsum(si, axis=1) - si
  g2, a, _ = runloop.take(g, ids, jnp.full_like(steps, z - 1), closed_before, ctx)
  g2 = dataclasses.replace(g2, state=engine.commit(ext, a, active))
  ci = closed.astype(jnp.int32)
  extra = engine.passes(decoder=steps + ci, encoder=ci + steps * enc_states)
  return runloop.count(g2, active, dec=steps, enc_global=1, passes=ext.passes + extra)


__all__ = ["BlockRule", "RULES", "EB_RULES", "BLOCK_LATENTS", "check_supported", "commit_mask",
           "prefix_keys", "block_logits", "denoise", "cycle"]
