"""BLT-D block-diffusion decoding and BLT-DV (fast_blt.md §4 and §6) on the cached engine.

BLT-D, per cycle with n committed (and processed) ids:
  latent   `open_latent`: the block latent L for a block starting at n (§4.3,
           block_latent="partial_last_patch"): the latent of the patch holding byte n-1, which is
           state.lat when that patch is closed, else one global step over the open patch pooled
           from the bytes it has (cache slots < n_closed read, nothing written). 1 N_enc.
           block_latent="force_boundary" instead closes that patch for good (`force_boundary`).
  denoise  Z positions n..n+Z-1 start as [MASK]; each step runs the local decoder over the block
           only (bidirectional within it, cross-attending L, causal onto the clean decoder ring
           within diffusion.block_prefix_window of the block start) and commits masked positions
           by the rule (§4.2: confidence α, entropy-bounded γ, or one step). 1 N_dec per step.
  commit   the Z ids (cut at EOS, stop string, budget) go through `speculative.extend` (entropy
           model, patching, encoder, global for patches that close, decoder ring) and `commit`.
BLT-DV, per cycle: x0 = argmax of the known logits (exact); x0 goes through the encoder and the
decoder as a clean position (reading L* = state.lat, "last_valid"); a block of Z ids at n+1 is
denoised as above with L*; then `speculative.verify_and_commit` verifies [x0, block] with one
causal pass and commits the longest verified prefix plus the verifier's byte. Its output is the
greedy causal decoding of the same BLT-D weights (§6.3).

Both block inputs of training are supported: the byte table ("tok_embeddings") or the local
encoder run over the block against the encoder ring ("encoder_states").
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from bltjax import decoding as D
from bltjax import model as M
from bltjax import speculative as S
from bltjax.config import EOS_ID, MASK_ID, BLTConfig
from bltjax.layers import attend_hm


@dataclasses.dataclass(frozen=True)
class BlockRule:
  """Which masked positions a denoising step commits (fast_blt.md §4.2)."""

  kind: str = "confidence"  # "confidence" (α) | "entropy" (EB, γ) | "one_step"
  alpha: float = 0.7
  gamma: float = 1.5
  eb_rule: str = "sum_minus_max"  # | "cumulative"

  def __post_init__(self):
    if self.kind not in ("confidence", "entropy", "one_step"):
      raise ValueError(f"rule.kind: unknown {self.kind!r} (confidence | entropy | one_step)")
    if self.eb_rule not in ("sum_minus_max", "cumulative"):
      raise ValueError(f"rule.eb_rule: unknown {self.eb_rule!r}")
    if not 0 <= self.alpha < 1:
      raise ValueError(f"rule.alpha: must be in [0, 1), got {self.alpha}")
    if self.gamma < 0:
      raise ValueError(f"rule.gamma: must be >= 0, got {self.gamma}")


def check_supported(cfg: BLTConfig) -> None:
  D.check_supported(cfg)
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


def commit_mask(logits_BxZxV, masked_BxZ, rule: BlockRule):
  """Masked positions to commit this step (at least one per row that has any)."""
  p = jax.nn.softmax(logits_BxZxV.astype(jnp.float32), axis=-1)
  any_masked = jnp.any(masked_BxZ, axis=1, keepdims=True)
  if rule.kind == "one_step":
    return masked_BxZ
  if rule.kind == "confidence":
    c = jnp.where(masked_BxZ, jnp.max(p, axis=-1), -1.0)
    best = jax.nn.one_hot(jnp.argmax(c, axis=1), c.shape[1], dtype=bool)
    pick = masked_BxZ & (c > rule.alpha)
    return jnp.where(jnp.any(pick, axis=1, keepdims=True), pick, best & any_masked)
  h = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)
  h = jnp.where(masked_BxZ, h, jnp.inf)
  order = jnp.argsort(h, axis=1, stable=True)  # ascending entropy; unmasked last
  hs = jnp.take_along_axis(h, order, axis=1)
  ok_sorted = jnp.isfinite(hs)
  csum = jnp.cumsum(jnp.where(ok_sorted, hs, 0.0), axis=1)
  bound = csum - hs if rule.eb_rule == "sum_minus_max" else csum  # sorted: max_U h = last
  take = ok_sorted & (bound <= rule.gamma)
  take = take.at[:, 0].set(ok_sorted[:, 0])  # always at least one
  take = jnp.cumprod(take.astype(jnp.int32), axis=1).astype(bool)  # a prefix
  inv = jnp.argsort(order, axis=1)
  return jnp.take_along_axis(take, inv, axis=1) & masked_BxZ


class Prefix(NamedTuple):
  """What a block reads of the committed ids: the encoder and decoder rings and the id history
  (newest last) for the hash n-grams of `encoder_states` blocks."""

  enc: D.KV
  dec: D.KV
  hist: jax.Array  # [B, Nh]


def _prefix_mask(ring: D.KV, start_B, z: int, window: int | None):
  """[B, Z, R + Z]: ring keys with start - W <= pos < start, then the block's own Z keys."""
  rel = start_B[:, None] - ring.pos
  ok = (ring.pos >= 0) & (rel >= 1)
  if window is not None:
    ok &= rel <= window
  b = start_B.shape[0]
  return jnp.concatenate([jnp.broadcast_to(ok[:, None], (b, z, ok.shape[1])),
                          jnp.ones((b, z, z), bool)], axis=2)


def _block_layer(layer, x_BxZxD, pos_BxZ, ring: D.KV, i: int, mask):
  q, k, v = layer.attn_in(x_BxZxD, pos_BxZ)
  k_all = jnp.concatenate([ring.k[i], k.transpose(0, 2, 1, 3).astype(ring.k.dtype)], axis=2)
  v_all = jnp.concatenate([ring.v[i], v.transpose(0, 2, 1, 3).astype(ring.v.dtype)], axis=2)
  return layer.attn_out(x_BxZxD, attend_hm(q, k_all, v_all, mask))


def _block_logits(params, cfg: BLTConfig, pre: Prefix, ids_BxZ, start_B, lat_k, lat_v):
  """Decoder logits of one block per row at positions start..start+Z-1 ([B, Z, 260]).

  Same math as `diffusion.decode_blocks` on the head-major rings: block inputs are the byte
  table ("tok_embeddings") or the local encoder over the block ("encoder_states": hash n-grams
  over the committed ids before it, encoder keys of the prefix window); then every decoder layer
  cross-attends lat_k/v [Ld, B, C, Hx, Kx] and attends the clean decoder keys with
  start - W_b <= pos < start plus the block's own keys. Nothing is written.
  """
  b, z = ids_BxZ.shape
  pos = start_B[:, None] + jnp.arange(z, dtype=jnp.int32)[None]
  wb = cfg.diffusion.block_prefix_window

  def run(m, ids):
    enc = m.local_encoder
    if cfg.diffusion.block_input == "tok_embeddings":
      x = enc.tok_embeddings(ids)
    else:
      g = max(cfg.hash.group_sizes) - 1 if cfg.hash.num_tables else 0
      cpos = start_B[:, None] - g + jnp.arange(g, dtype=jnp.int32)[None]
      all_pos = jnp.concatenate([cpos, pos], axis=1)
      all_ids = jnp.concatenate([pre.hist[:, pre.hist.shape[1] - g:], ids], axis=1)
      x = enc.embed(all_ids, jnp.maximum(all_pos, 0), all_pos >= 0)[:, g:]
      emask = _prefix_mask(pre.enc, start_B, z, wb)
      for i, layer in enumerate(enc.layers):
        x = _block_layer(layer, x, pos, pre.enc, i, emask)
    x = x.astype(M.dtype_of(cfg.dtype))
    dm = m.local_decoder
    dmask = _prefix_mask(pre.dec, start_B, z, wb)
    for i, layer in enumerate(dm.layers):
      lk = jnp.broadcast_to(lat_k[i][:, None], (b, z, *lat_k.shape[2:]))
      lv = jnp.broadcast_to(lat_v[i][:, None], (b, z, *lat_v.shape[2:]))
      out = dm.cross_attn_layers[i].gathered(x, lk, lv)
      x = x + out if cfg.cross_attn_residual == "double" else out
      x = _block_layer(layer, x, pos, pre.dec, i, dmask)
    return dm.head(x)

  return M.blt_module(cfg).apply({"params": M.blt_params(params)}, ids_BxZ, method=run)


def denoise(params, cfg: BLTConfig, pre: Prefix, start_B, lat_k, lat_v, rule: BlockRule,
            active_B, keys_B=None, sampling=None):
  """Block denoising from all-[MASK]: (ids [B, Z], decoder steps [B]).

  Values are greedy, or with `sampling` = (temperature, top_k, top_p) arrays [B] drawn per
  position from its row key folded with the position and the step (batch-independent); which
  positions commit is the rule's choice from the probabilities either way (§4.2).
  """
  b, z = start_B.shape[0], cfg.diffusion.block_size
  ids0 = jnp.full((b, z), MASK_ID, jnp.int32)

  def values(logits_BxZxV, steps_B):
    if sampling is None:
      return jnp.argmax(logits_BxZxV, axis=-1).astype(jnp.int32)
    pos = start_B[:, None] + jnp.arange(z)[None]
    # A row's own step count (not the batch's iteration) keeps its draws batch-independent.
    keys = jax.vmap(lambda k, p, s: jax.vmap(lambda q: jax.random.fold_in(
      jax.random.fold_in(k, q), s))(p))(keys_B, pos, steps_B)
    rep = lambda x: jnp.repeat(x, z, axis=0)  # noqa: E731
    drawn = D.sample(logits_BxZxV.reshape(b * z, -1), keys.reshape(b * z),
                     *(rep(x) for x in sampling))
    return drawn.reshape(b, z)

  def cond(c):
    ids, steps = c
    return jnp.any(active_B & jnp.any(ids == MASK_ID, axis=1)) & (jnp.max(steps) < z)

  def body(c):
    ids, steps = c
    masked = (ids == MASK_ID) & active_B[:, None]
    logits = _block_logits(params, cfg, pre, ids, start_B, lat_k, lat_v)
    pick = commit_mask(logits, masked, rule)
    ids = jnp.where(pick, values(logits, steps), ids)
    return ids, steps + jnp.any(masked, axis=1).astype(jnp.int32)

  return jax.lax.while_loop(cond, body, (ids0, jnp.zeros((b,), jnp.int32)))


def open_latent(params, cfg: BLTConfig, state: D.DecodeState):
  """Latent K/V a block starting at n reads ("partial_last_patch"): [Ld, B, C, Hx, Kx]."""
  gk, gv = D.flush_global(state)
  _, _, lk, lv = D.global_one(params, cfg, gk, gv, state.patch_max, state.patch_k, state.patch_v,
                              state.patch_len, state.n_closed)
  is_open = (~state.next_start & (state.patch_len > 0))[None, :, None, None, None]
  return jnp.where(is_open, lk, state.lat_k), jnp.where(is_open, lv, state.lat_v)


def force_boundary(params, cfg: BLTConfig, state: D.DecodeState, active_B) -> D.DecodeState:
  """Closes the open patch holding byte n-1 ("force_boundary", §4.3): slot n starts a patch.

  The patch is pooled and its global keys written as a real closed patch; its latent is what
  the block reads, as in training. Byte n-1 now ends a patch, so by the previous-patch rule its
  decoder position reads that latent too: the decoder step at n-1 is re-run (its ring keys and
  the logits at n-1 replaced; fused into the block's first decoder call in the paper's
  accounting, not counted). The mode's own decision for slot n (`rule_start`) is kept for the
  threshold_add guard, as a `max_patch_length` split keeps it.
  """
  gk, gv = D.flush_global(state)
  new_k, new_v, lk, lv = D.global_one(params, cfg, gk, gv, state.patch_max, state.patch_k,
                                      state.patch_v, state.patch_len, state.n_closed)
  close = active_B & ~state.next_start & (state.patch_len > 0)
  rows = jnp.arange(close.shape[0])
  slot = jnp.where(close, state.n_closed, gk.shape[3])
  for i in range(gk.shape[0]):
    gk = gk.at[i, rows, :, slot].set(new_k[i].astype(gk.dtype), mode="drop")
    gv = gv.at[i, rows, :, slot].set(new_v[i].astype(gv.dtype), mode="drop")
  pos = (state.n - 1)[:, None]

  def redo(m, hist, enc, dec):
    h, _ = S._encode(m, cfg, hist[:, None], pos, jnp.zeros_like(pos, bool), enc)
    return S._decode(m, cfg, h, pos, close[:, None], dec, lk[:, :, None], lv[:, :, None])

  logits, dec = S._apply(params, cfg, redo, state.hist, state.enc, state.dec)
  sel = close[None, :, None, None, None]
  return dataclasses.replace(
    state, dec=dec, glob_k=gk, glob_v=gv, pend_idx=jnp.full_like(state.pend_idx, gk.shape[3]),
    n_closed=state.n_closed + close.astype(jnp.int32), lat_k=jnp.where(sel, lk, state.lat_k),
    lat_v=jnp.where(sel, lv, state.lat_v), next_start=state.next_start | close,
    logits=jnp.where(close[:, None], logits[:, 0], state.logits))


BLOCK_LATENTS = ("partial_last_patch", "force_boundary")


@functools.partial(jax.jit, static_argnames=("cfg", "max_new", "rule", "block_latent"),
                   donate_argnames=("dstate",))
def bltd_loop(params, cfg: BLTConfig, dstate: D.DecodeState, budget_B, max_new: int,
              rule: BlockRule, stop_ids_NxL, stop_len_N, eos_id=EOS_ID,
              block_latent: str = "partial_last_patch", keys_B=None, sampling=None
              ) -> S.SpecState:
  """BLT-D: blocks of Z bytes until every row is done (counters: nfe_dec = denoising steps,
  nfe_enc = blocks; drafted/accepted/agree stay 0). `keys_B`/`sampling` as in `denoise`."""
  cfg = D._dec_cfg(cfg)
  z = cfg.diffusion.block_size

  def body(g):
    d = g.dstate
    active = ~g.done
    if block_latent == "force_boundary":
      d = force_boundary(params, cfg, d, active)
      lat_k, lat_v = d.lat_k, d.lat_v
    else:
      lat_k, lat_v = open_latent(params, cfg, d)
    ids, steps = denoise(params, cfg, Prefix(d.enc, d.dec, d.hist), d.n, lat_k, lat_v, rule,
                         active, keys_B, sampling)
    # BLT-D keeps its own ids (no verification): one causal pass caches them.
    g2 = _commit_block(params, cfg, g, d, ids, budget_B, stop_ids_NxL, stop_len_N, eos_id)
    ai = active.astype(jnp.int32)
    return dataclasses.replace(g2, nfe_dec=g.nfe_dec + ai * steps, nfe_enc=g.nfe_enc + ai)

  return jax.lax.while_loop(lambda g: (g.step < max_new) & ~jnp.all(g.done), body,
                            S.init_spec_state(dstate, budget_B, max_new, z))


def _commit_block(params, cfg, g: S.SpecState, d: D.DecodeState, ids_BxZ, budget_B,
                  stop_ids_NxL, stop_len_N, eos_id) -> S.SpecState:
  """Commits ids_BxZ (up to the first event: EOS, stop string, budget, global cache)."""
  ext = S._extend_impl(params, cfg, d, ids_BxZ, ~g.done)
  limit = jnp.full((ids_BxZ.shape[0],), ids_BxZ.shape[1] - 1, jnp.int32)
  return S.commit_window(g, d, ext, ids_BxZ, limit, budget_B, stop_ids_NxL, stop_len_N, eos_id)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new", "rule"),
                   donate_argnames=("dstate",))
def bltdv_loop(params, cfg: BLTConfig, dstate: D.DecodeState, budget_B, max_new: int,
               rule: BlockRule, stop_ids_NxL, stop_len_N, eos_id=EOS_ID) -> S.SpecState:
  """BLT-DV: diffusion drafts of Z ids verified by one causal pass (greedy causal output)."""
  cfg = D._dec_cfg(cfg)
  z = cfg.diffusion.block_size

  def body(g):
    d = g.dstate
    active = ~g.done
    x0 = jnp.argmax(d.logits, axis=-1).astype(jnp.int32)
    # x0 as a clean position at n (encoder + decoder ring, latent L*): the block's prefix.
    _, enc, dec = S.draft(params, cfg, d, x0, 1, active)
    d = dataclasses.replace(d, enc=enc, dec=dec)
    hist = jnp.concatenate([d.hist[:, 1:], x0[:, None]], axis=1)
    drafts, steps = denoise(params, cfg, Prefix(enc, dec, hist), d.n + 1, d.lat_k, d.lat_v, rule,
                            active)
    return S.verify_and_commit(params, cfg, g, d, x0, drafts, steps, budget_B, stop_ids_NxL,
                               stop_len_N, eos_id)

  return jax.lax.while_loop(lambda g: (g.step < max_new) & ~jnp.all(g.done), body,
                            S.init_spec_state(dstate, budget_B, max_new, z + 1))


def generate(params, cfg: BLTConfig, prompts: list[bytes], *, max_new: int,
             method: str = "bltd", rule: BlockRule = BlockRule(),
             block_latent: str = "partial_last_patch", sc: D.SamplingConfig | None = None,
             seeds: list[int] | None = None, stops: tuple[bytes, ...] = (),
             budgets: list[int] | None = None, max_patches: int | None = None,
             patch_cap: int = 512, batch_bucket: bool = True,
             stop_at_eos: bool = True) -> list[S.SpecGeneration]:
  """BLT-D ("bltd") or BLT-DV ("bltdv") generation; results as `speculative.generate`
  (cycles = blocks for BLT-D, verifications for BLT-DV). `block_latent` (BLT-D, §4.3):
  "partial_last_patch" keeps pure entropy patching; "force_boundary" starts a patch at every
  block start (the training layout; the committed patching then differs from causal mode).
  `sc` with temperature > 0 samples BLT-D's values (per-row `seeds`); BLT-DV is greedy only."""
  if method not in ("bltd", "bltdv"):
    raise ValueError(f"method: unknown {method!r} (bltd | bltdv)")
  if block_latent not in BLOCK_LATENTS:
    raise ValueError(f"block_latent: unknown {block_latent!r} ({' | '.join(BLOCK_LATENTS)})")
  sampled = sc is not None and sc.temperature > 0
  if sampled and method == "bltdv":
    raise ValueError("sc: BLT-DV verifies drafts by exact greedy match; it has no sampling mode")
  if method == "bltdv" and block_latent != "partial_last_patch":
    raise ValueError("block_latent: BLT-DV drafts with the last closed latent and verifies with "
                     "pure entropy patching; force_boundary applies to BLT-D only")
  check_supported(cfg)
  z = cfg.diffusion.block_size
  st, budget, pre_patches = D.prepare(params, cfg, prompts, max_new=max_new, budgets=budgets,
                                      max_patches=max_patches, patch_cap=patch_cap,
                                      batch_bucket=batch_bucket, ring_extra=z + 1)
  args = (params, cfg, st, jnp.asarray(budget), max_new, rule, *D.stop_arrays(stops),
          jnp.asarray(EOS_ID if stop_at_eos else -1, jnp.int32))
  if method == "bltd":
    kw = {}
    if sampled:
      b = budget.shape[0]
      seeds = list(seeds) if seeds is not None else [0] * len(prompts)
      kw = dict(keys_B=jnp.stack([jax.random.key(int(x)) for x in seeds + [0] * (b - len(seeds))]),
                sampling=sc.arrays(b))
    g = bltd_loop(*args, block_latent=block_latent, **kw)
  else:
    g = bltdv_loop(*args)
  g = jax.device_get(g)
  res = []
  for i in range(len(prompts)):
    r = D.STOP_NAMES[int(g.reason[i])]
    toks = D.trim(g.out[i, :g.n_new[i]].tolist(), r, stops)
    cyc = int(g.cycles[i])
    # Encoder byte calls outside encoder+global: BLT-DV's x0 step per cycle; encoder_states
    # blocks run the encoder once per denoising step (BLT-DV: decoder NFEs minus the verify).
    steps = int(g.nfe_dec[i]) - (cyc if method == "bltdv" else 0)
    enc_byte = (cyc if method == "bltdv" else 0) + (
      steps if cfg.diffusion.block_input == "encoder_states" else 0)
    res.append(S.SpecGeneration(toks, r, int(g.nfe_dec[i]), int(g.nfe_enc[i]),
                                int(pre_patches[i]),
                                nfe_ent=cyc if cfg.entropy is not None else 0,
                                nfe_enc_byte=enc_byte, cycles=cyc, drafted=int(g.drafted[i]),
                                accepted=int(g.accepted[i]), agree=int(g.agree[i])))
  return res


__all__ = ["BlockRule", "Prefix", "commit_mask", "denoise", "open_latent", "force_boundary",
           "bltd_loop",
           "bltdv_loop", "generate", "check_supported"]
