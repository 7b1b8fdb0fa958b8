"""BLT-D: block-diffusion training of the BLT local decoder (fast_docs/architecture.md–3).

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
and docs/benchmarks.md ("BLT-D training") lists XLA's measured peaks. The block stream is why
BLT-D costs more than BLT: N/S = 1 + Z·M/S ≈ 1 + Z/n_p (5 at n_p = 4, Z = 16).

Public API:
  build_blocks, sample_t, corrupt_blocks                    §3.1 / §3.2
  bltd_forward, bltd_loss                                   training (§3.8)
  two_streams                                               how both streams attend per layer
Both streams run through the model's stage methods (`LocalEncoder.states`, `LocalDecoder.logits`)
under `two_streams`, as decoding runs them under its rings. The attention kernels and their plan
live in `kernels.py` (one set for BLT and BLT-D training); the slow references the tests compare
against in tests/bltd_reference.py.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bltjax.config import BOS_ID, EOS_ID, MASK_ID, OFFSET, BLTConfig, TransformerConfig
from bltjax.modeling import accel, kernels, model, patching
from bltjax.modeling.kernels import AttnPlan
from bltjax.modeling.layers import remat_policy
from bltjax.training import losses

Params = dict[str, Any]
Metrics = dict[str, jnp.ndarray]

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
# The two streams through the model's stages (`LocalEncoder.states`, `LocalDecoder.logits`).


def two_streams(cfg: BLTConfig, tc: TransformerConfig, plan: AttnPlan, clean_BxS: dict[str, Any],
                bl: dict[str, Any] | None):
  """How a local stack attends in BLT-D training, as the stages take it (`layers.attending`'s
  contract, `run(layers, x, pos, cross=None) -> (x, None)`) over two streams: x = (clean h
  [B, S, D], block h [B, M·Z, D] or None), pos likewise.

  Per layer, the clean stream is BLT's local attention (`LocalPattern`, `plan.clean_*`; it never
  reads block arrays, so with no block stream this is exactly the BLT layer) and the blocks
  attend their own slots plus the clean stream's keys/values of the same layer within
  diffusion.block_prefix_window (`plan.block_*`). Each layer, the decoder's cross-attention
  included, is rematerialised as a whole under `cfg.remat`, over its own weights only.
  """
  c = clean_BxS
  clean = kernels.LocalPattern(c["pos_BxS"], c["doc_BxS"], c["valid_BxS"], tc.window,
                               plan.clean_segment, plan.clean_chunk,
                               impl=accel.resolve(cfg.attention, c["pos_BxS"].shape[1]))
  blocks = (kernels.block_dense_prefix_attend if plan.block_prefix == "dense"
            else kernels.block_prefix_attend)

  def run(layers, x, pos, cross=None):
    pos_c, pos_b = pos
    for i, blk in enumerate(layers):
      def layer(blk, xa, h, i=i):
        if xa is not None:
          h = cross.at(xa, i, h)
        hc, hb = h
        # `attn_in`/`attn_out`, not the Block call: the layer is rematerialised here as a whole.
        q, k, v = blk.attn_in(hc, pos_c)
        hc = blk.attn_out(hc, clean.attend(q, k, v))
        if hb is None:
          return hc, None
        b, n = hb.shape[:2]
        qb, kb, vb = blk.attn_in(hb, pos_b)
        unflat = lambda y: y.reshape(*bl["valid_BxMxZ"].shape, *y.shape[2:])  # noqa: E731
        ob = blocks(unflat(qb), unflat(kb), unflat(vb), bl["valid_BxMxZ"], bl["start_BxM"],
                    bl["doc_BxM"], k, v, c["valid_BxS"], c["doc_BxS"],
                    cfg.diffusion.block_prefix_window, plan.block_chunk)
        return hc, blk.attn_out(hb, ob.reshape(b, n, *ob.shape[3:]))

      if cfg.remat != "none":
        layer = nn.remat(layer, policy=remat_policy(cfg.remat))
      x = layer(blk, None if cross is None else cross.layers[i], x)
    return x, None

  return run


def _block_context(cfg: BLTConfig, bl: dict[str, Any], ids_BxS, valid_BxS):
  """The G = `model.block_context` clean bytes before each block ([B·M, G] ids, valid): what
  its hash n-grams read (`LocalEncoder.embed_block`)."""
  b, m = bl["start_BxM"].shape
  g, s = model.block_context(cfg), ids_BxS.shape[1]
  j_BxMxG = bl["start_BxM"][:, :, None] - g + jnp.arange(g, dtype=jnp.int32)[None, None, :]
  jc = jnp.clip(j_BxMxG, 0, s - 1).reshape(b, m * g)
  ok = (j_BxMxG >= 0) & jnp.take_along_axis(valid_BxS, jc, axis=1).reshape(b, m, g)
  ids = jnp.where(ok, jnp.take_along_axis(ids_BxS, jc, axis=1).reshape(b, m, g), 0)
  return ids.reshape(b * m, g), ok.reshape(b * m, g)


# ------------------------------------------------------------------------------------------------
# Forward.


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
  start, new_len = losses.truncate_to_patches(start, losses.lengths_of(valid), p)
  valid &= jnp.arange(s, dtype=jnp.int32)[None, :] < new_len[:, None]
  ids = jnp.where(valid, ids, 0)
  plan = kernels.make_plan(cfg, s, nm, clean_segment, block_chunk, block_prefix)
  pos = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32)[None, :], (b, s))
  a = model.byte_arrays(start, ids, valid, p)

  bl = noisy = mask = t_B = blk_in = pos_b = None
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
    pos_b = bl["pos_BxMxZ"].reshape(b, nm * z)
    flat = lambda x: x.reshape(b * nm, *x.shape[2:])  # noqa: E731
    blk_in = (flat(jnp.where(bl["valid_BxMxZ"], noisy, 0)), flat(bl["pos_BxMxZ"]),
              flat(bl["valid_BxMxZ"]), *_block_context(cfg, bl, ids, valid))
  enc_blocks = with_blocks and cfg.diffusion.block_input == "encoder_states"
  clean = dict(pos_BxS=pos, doc_BxS=doc, valid_BxS=valid)

  def stages(m, ids, blk_in):
    enc, dec = m.local_encoder, m.local_decoder
    run = lambda tc: two_streams(cfg, tc, plan, clean, bl)  # noqa: E731
    hb = None if blk_in is None else enc.embed_block(*blk_in).reshape(b, nm * z, -1)
    # Local encoder on the clean bytes (and the blocks for block_input="encoder_states").
    (x, hb_enc), _ = enc.states((enc.embed(ids, pos, valid), hb if enc_blocks else None),
                                (pos, pos_b), run(cfg.encoder))
    o = m.global_transformer(enc.pool(x, a["patch_ids"], valid, p), a["patch_pos"],
                             a["patch_doc"], a["patch_valid"])
    kvs = dec.latent_kv(o)
    # Local decoder: both streams layer by layer; block m reads the C keys of latent m only.
    latent = lambda i: (model.take_latent(kvs[i], a["dec_ids"]),  # noqa: E731
                        None if bl is None else model.take_latent(kvs[i], bl["lat_BxM"]))
    return dec.logits((x, hb_enc if enc_blocks else hb), (pos, pos_b), run(cfg.decoder),
                      latent)[0]

  clean_logits, block_logits = model.apply_blt(params, cfg, stages, ids, blk_in)
  if with_blocks:
    block_logits = block_logits.reshape(b, nm, z, -1)
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
  """BLT-D training loss (fast_docs/architecture.md) and metrics, under the `losses.py` contract.

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


__all__ = ["build_blocks", "sample_t", "corrupt_blocks", "two_streams", "bltd_forward", "bltd_loss",
           "loss_from_outputs", "clean_targets", "MASK_ID"]
