"""Slow references of BLT-D that the tests compare the training and decoding code against.

  decode_blocks          the local decoder over blocks only, against a given clean-prefix K/V
  clean_decoder_kv       the causal decoder pass returning each layer's clean K/V for it
  dense_reference_mask   the block-diffusion mask over [clean ; all blocks] written out densely
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from bltjax.config import BLTConfig
from bltjax.modeling import kernels, model
from bltjax.modeling.layers import attend, dtype_of, local_mask

Params = dict[str, Any]


def _apply(cfg: BLTConfig, params: Params, fn, *args):
  return model.blt_module(cfg).apply({"params": model.blt_params(params)}, *args,
                                     method=lambda m, *a: fn(m, *a))


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
    block_h_BxMxZxD = _apply(cfg, params, lambda mm, x: mm.local_encoder.tok_embeddings(x), ids)
  # Block m reads latent m, gathered per byte (`LocalDecoder.cross`, the clean stream's form).
  lat_BxMZ = jnp.broadcast_to(jnp.repeat(jnp.arange(nm, dtype=jnp.int32), z)[None], (b, nm * z))
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
      hb = dec.cross(i, hb.reshape(b, nm * z, d), kvs[i], lat_BxMZ).reshape(b, nm, z, d)
      flat = hb.reshape(b, nm * z, d)
      qb, kb, vb = dec.layers[i].attn_in(flat, block_pos_BxMxZ.reshape(b, nm * z))
      unflat = lambda x: x.reshape(b, nm, z, *x.shape[2:])
      kp, vp = kvp[i]
      bc = lambda x: jnp.broadcast_to(x[:, None], (b, nm, t, *x.shape[2:]))
      ob = kernels.block_attend(unflat(qb), unflat(kb), unflat(vb), block_valid_BxMxZ, bc(kp),
                                bc(vp), pmask)
      hb = dec.layers[i].attn_out(flat, ob.reshape(b, nm * z, *ob.shape[3:])).reshape(b, nm, z, d)
    return dec.head(hb.reshape(b, nm * z, d)).reshape(b, nm, z, -1)

  return _apply(cfg, params, run, block_h_BxMxZxD.astype(dt), latent_BxMxDg, prefix_kv)


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
      h = dec.layers[i].attn_out(h, attend(q, k, v, local_mask(
        pos_BxS, pos_BxS, doc_BxS, doc_BxS, valid_BxS, cfg.decoder.window)))
    return dec.head(h), out

  return _apply(cfg, params, run, h_BxSxD.astype(dtype_of(cfg.dtype)), o_BxPxDg)


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
