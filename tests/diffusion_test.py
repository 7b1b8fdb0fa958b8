"""BLT-D training (bltjax/training/diffusion.py): blocks, masks, kernels, loss vs a slow
reference."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax.config import (
  BOS_ID,
  EOS_ID,
  MASK_ID,
  BLTConfig,
  DiffusionConfig,
  HashConfig,
  PatcherConfig,
  TransformerConfig,
)
from bltjax.modeling import kernels, model
from bltjax.modeling.layers import attend, run_stack
from bltjax.training import diffusion, losses
from tests import bltd_reference

S, Z, W = 16, 4, 5
WB = 4  # the blocks' prefix window (diffusion.block_prefix_window), unlike the stacks' W

# These tiny graphs run in microseconds; LLVM's optimisation passes are most of their compile time
# (about half the suite), so this file's own jits skip them. Numerics do not depend on it.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def tiny_cfg(block_input: str = "tok_embeddings", hashed: bool = False, **diff) -> BLTConfig:
  diff = {"block_prefix_window": WB, **diff}
  st = lambda d, L, name, w=W: TransformerConfig(d, L, 2, ffn_dim=2 * d, window=w, name=name)
  hsh = HashConfig(group_sizes=(3,), vocab=31) if hashed else HashConfig(group_sizes=(),
                                                                         nb_functions=0)
  return BLTConfig(encoder=st(16, 1, "encoder"), global_=st(32, 1, "global", None),
                   decoder=st(16, 2, "decoder"), hash=hsh, patcher=PatcherConfig(mode="space"),
                   diffusion=DiffusionConfig(block_size=Z, block_input=block_input, **diff))


def starts(s: int, pos: list[int]) -> np.ndarray:
  out = np.zeros(s + 1, bool)
  out[pos] = True
  return out


def hand_batch() -> dict[str, np.ndarray]:
  """Row 0: one document, varied patch lengths. Row 1: two documents (EOS at 5, BOS at 6), 10
  valid ids, so blocks meet a document end and the row end."""
  ids = np.arange(10, 10 + 2 * S, dtype=np.int32).reshape(2, S)
  ids[:, 0] = BOS_ID
  ids[1, 5], ids[1, 6] = EOS_ID, BOS_ID
  valid = np.ones((2, S), bool)
  valid[1, 10:] = False
  ids[1, 10:] = 0
  doc = np.ones((2, S), np.int32)
  doc[1, 6:10], doc[1, 10:] = 2, 0
  start = np.stack([starts(S, [0, 1, 3, 4, 8, 13, 14]), starts(S, [0, 1, 4, 6, 7, 10])])
  return dict(ids=ids, valid=valid, doc_ids=doc, start=start)


@functools.partial(jit, static_argnums=(1,))
def _blocks(b, m):
  return diffusion.build_blocks(b["ids"], b["valid"], b["doc_ids"], b["start"], Z, m)


def blocks(b, m=6):
  return jax.tree.map(np.asarray, _blocks({k: b[k] for k in ("ids", "valid", "doc_ids", "start")},
                                          m))


# ------------------------------------------------------------------------------------------------
# §3.1 blocks and §3.2 noise.


def test_build_blocks_hand_case():
  b = hand_batch()
  bl = blocks(b)
  np.testing.assert_array_equal(bl["start_BxM"], [[1, 3, 4, 8, 13, 14], [1, 4, 6, 7, S, S]])
  np.testing.assert_array_equal(bl["exists_BxM"], [[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
  np.testing.assert_array_equal(bl["pos_BxMxZ"][0, 3], [8, 9, 10, 11])
  # Blocks overlap and cross patch boundaries: block at 3 holds bytes 3..6 (patches 2 and 3).
  np.testing.assert_array_equal(bl["ids_BxMxZ"][0, 1], b["ids"][0, 3:7])
  # Sequence end: the block at 14 has bytes 14, 15 and two pad slots.
  np.testing.assert_array_equal(bl["valid_BxMxZ"][0, 5], [1, 1, 0, 0])
  np.testing.assert_array_equal(bl["ids_BxMxZ"][0, 5], [b["ids"][0, 14], b["ids"][0, 15], 0, 0])
  # Document end: the block at 4 keeps bytes 4 and 5 (the EOS), then pads.
  np.testing.assert_array_equal(bl["valid_BxMxZ"][1, 1], [1, 1, 0, 0])
  np.testing.assert_array_equal(bl["ids_BxMxZ"][1, 1], [b["ids"][1, 4], EOS_ID, 0, 0])
  # New document: the block at 6 starts with its BOS, attended but never a target.
  np.testing.assert_array_equal(bl["valid_BxMxZ"][1, 2], [1, 1, 1, 1])
  np.testing.assert_array_equal(bl["target_BxMxZ"][1, 2], [0, 1, 1, 1])
  # Row end (10 valid ids): the block at 7 has 3 bytes; the next-slot patch (10) has no block.
  np.testing.assert_array_equal(bl["valid_BxMxZ"][1, 3], [1, 1, 1, 0])
  assert not bl["valid_BxMxZ"][1, 4:].any() and not bl["target_BxMxZ"][1, 4:].any()
  np.testing.assert_array_equal(bl["doc_BxM"][1, :4], [1, 1, 2, 2])
  np.testing.assert_array_equal(bl["dropped_B"], [0, 0])
  # Static M: the excess blocks are dropped and counted.
  small = blocks(b, 2)
  np.testing.assert_array_equal(small["start_BxM"], [[1, 3], [1, 4]])
  np.testing.assert_array_equal(small["dropped_B"], [4, 2])


def test_noise_masks_only_targets():
  b = hand_batch()
  bl = blocks(b)
  noisy, mask = diffusion.corrupt_blocks(jax.random.key(0), bl["ids_BxMxZ"], bl["target_BxMxZ"],
                                         jnp.ones(2))
  np.testing.assert_array_equal(mask, bl["target_BxMxZ"])  # t = 1: every target, nothing else
  assert (np.asarray(noisy)[np.asarray(mask)] == MASK_ID).all()
  assert (np.asarray(noisy)[~np.asarray(mask)] == np.asarray(bl["ids_BxMxZ"])[~np.asarray(mask)]
          ).all()
  _, mask0 = diffusion.corrupt_blocks(jax.random.key(0), bl["ids_BxMxZ"], bl["target_BxMxZ"],
                                      jnp.full(2, 1e-9))
  assert not np.asarray(mask0).any()
  t = np.asarray(diffusion.sample_t(jax.random.key(3), 8, 1e-3, stratified=True))
  np.testing.assert_allclose(np.diff(t), (1 - 1e-3) / 8, rtol=1e-5)
  t = np.asarray(diffusion.sample_t(jax.random.key(3), 4096, 1e-3))
  assert t.min() >= 1e-3 and t.max() <= 1 and abs(t.mean() - 0.5) < 0.02


# ------------------------------------------------------------------------------------------------
# §3.5 attention pattern and the §3.7 kernels.


def numpy_mask(b: dict[str, np.ndarray], bl: dict[str, np.ndarray], row: int, m: int,
               window: int, block_window: int | None = None) -> np.ndarray:
  """The §3.5 mask for [clean S ; block m] written out with loops (the slow reference's mask)."""
  s_p, n = int(bl["start_BxM"][row, m]), S + Z
  bw = window if block_window is None else block_window
  valid, doc = b["valid"][row], b["doc_ids"][row]
  out = np.zeros((n, n), bool)
  for i in range(S):
    for j in range(S):
      out[i, j] = 0 <= i - j < window and doc[i] == doc[j] and valid[j]
  for k in range(Z):
    for j in range(S):
      out[S + k, j] = s_p - bw <= j < s_p and doc[j] == doc[min(s_p, S - 1)] and valid[j]
    for k2 in range(Z):
      out[S + k, S + k2] = bl["valid_BxMxZ"][row, m, k2]
  return out


def test_attention_pattern_hand_case():
  b = hand_batch()
  bl = blocks(b)
  pos = np.broadcast_to(np.arange(S), (2, S))
  dense = np.asarray(bltd_reference.dense_reference_mask(
    pos, b["doc_ids"], b["valid"], bl["start_BxM"], bl["doc_BxM"], bl["valid_BxMxZ"], 3))
  row_of = lambda r, m: dense[r, S + m * Z: S + (m + 1) * Z]
  # Row 0, block at s=4 (m=2), W=3: clean keys 1, 2, 3 and its own 4 slots, nothing else.
  want = np.zeros(S + 6 * Z, bool)
  want[[1, 2, 3]] = True
  want[S + 2 * Z: S + 3 * Z] = True
  np.testing.assert_array_equal(row_of(0, 2), np.broadcast_to(want, (Z, S + 6 * Z)))
  # Row 1, block at 6 (BOS of document 2): no clean key (all earlier keys are document 1).
  assert not row_of(1, 2)[:, :S].any()
  # Row 1, block at 7: only key 6 (same document, inside [4, 7)); own slots 0..2 (3 is pad).
  np.testing.assert_array_equal(np.flatnonzero(row_of(1, 3)[0, :S]), [6])
  np.testing.assert_array_equal(row_of(1, 3)[0, S + 3 * Z: S + 4 * Z], [1, 1, 1, 0])
  # Row 1, block at 4: keys 1..3, own slots 0..1 (6, 7 belong to document 2).
  np.testing.assert_array_equal(np.flatnonzero(row_of(1, 1)[0]), [1, 2, 3, S + 4, S + 5])
  # Clean rows never see blocks; the block part equals the loop-written mask of each block.
  assert not dense[:, :S, S:].any()
  for r in range(2):
    for m in range(4):
      ref = numpy_mask(b, bl, r, m, 3)
      np.testing.assert_array_equal(dense[r, :S, :S], ref[:S, :S])
      np.testing.assert_array_equal(row_of(r, m)[:, :S], ref[S:, :S])


def _rand(key, *shape):
  return jax.random.normal(key, shape, jnp.float32)


@pytest.mark.parametrize("kind,chunk", [("gather", None), ("gather", 2), ("dense", None),
                                        ("dense", 4)])
def test_block_kernel_equals_dense_attention(kind, chunk):
  """Both block kernels (gathered window / masked full prefix; optionally chunked + remat) equal
  dense attention under the §3.5 mask over [clean ; all blocks]."""
  b = hand_batch()
  bl = blocks(b)
  h, g, kd, nm = 4, 2, 8, 6
  ks = jax.random.split(jax.random.key(0), 6)
  qc, kc, vc = _rand(ks[0], 2, S, h, kd), _rand(ks[1], 2, S, g, kd), _rand(ks[2], 2, S, g, kd)
  qb, kb, vb = (_rand(ks[3], 2, nm, Z, h, kd), _rand(ks[4], 2, nm, Z, g, kd),
                _rand(ks[5], 2, nm, Z, g, kd))
  pos = jnp.broadcast_to(jnp.arange(S)[None, :], (2, S))
  valid, doc = jnp.asarray(b["valid"]), jnp.asarray(b["doc_ids"])

  kern = dict(gather=kernels.block_prefix_attend, dense=kernels.block_dense_prefix_attend)

  def kernel(qb, kb, vb, kc, vc):
    return kern[kind](qb, kb, vb, bl["valid_BxMxZ"], bl["start_BxM"], bl["doc_BxM"], kc, vc,
                      valid, doc, 3, chunk)

  def dense(qb, kb, vb, kc, vc):
    mask = bltd_reference.dense_reference_mask(pos, doc, valid, bl["start_BxM"], bl["doc_BxM"],
                                          bl["valid_BxMxZ"], 3)
    cat = lambda c, x: jnp.concatenate([c, x.reshape(2, nm * Z, *x.shape[3:])], axis=1)
    o = attend(cat(qc, qb), cat(kc, kb), cat(vc, vb), mask)
    return o[:, S:].reshape(qb.shape)

  fn, ref, args = jit(kernel), jit(dense), (qb, kb, vb, kc, vc)
  np.testing.assert_allclose(fn(*args), ref(*args), atol=1e-6)
  # Keys outside [s - W, s) (or in another document) have no effect.
  far = kc.at[0, 0].set(100.0).at[1, 5].set(100.0)  # block 0 of row 0 starts at 1; row 1 m=2
  np.testing.assert_array_equal(fn(qb, kb, vb, far, vc)[0, 2:], fn(*args)[0, 2:])  # s >= 4
  np.testing.assert_array_equal(fn(qb, kb, vb, far, vc)[1], fn(*args)[1])  # other document
  # Changing block m's keys changes only block m.
  moved = fn(qb, kb.at[0, 3].add(1.0), vb, kc, vc)
  changed = np.abs(np.asarray(moved - fn(*args))).reshape(2, nm, -1).max(-1) > 0
  np.testing.assert_array_equal(changed, [[0, 0, 0, 1, 0, 0], [0] * nm])
  # Gradients through the chunked, rematerialised map equal the dense ones.
  r = _rand(jax.random.key(9), 2, nm, Z, h, kd) * bl["valid_BxMxZ"][..., None, None]
  loss = lambda f: lambda *a: jnp.sum(f(*a) * r)
  g1 = jit(jax.grad(loss(kernel), argnums=(0, 1, 2, 3, 4)))(*args)
  g2 = jit(jax.grad(loss(dense), argnums=(0, 1, 2, 3, 4)))(*args)
  for a, c in zip(g1, g2):
    np.testing.assert_allclose(a, c, atol=1e-5)


def test_segment_local_attention_equals_dense():
  b = hand_batch()
  h, g, kd, s = 4, 2, 8, S
  ks = jax.random.split(jax.random.key(1), 3)
  q, k, v = _rand(ks[0], 2, s, h, kd), _rand(ks[1], 2, s, g, kd), _rand(ks[2], 2, s, g, kd)
  pos = jnp.broadcast_to(jnp.arange(s)[None, :], (2, s))
  args = (pos, jnp.asarray(b["doc_ids"]), jnp.asarray(b["valid"]), W)
  la = jit(kernels.local_attend, static_argnums=(6, 7, 8))
  dense = la(q, k, v, *args, None, None)
  for seg, chunk in ((3, None), (4, 2), (5, 1)):
    out = la(q, k, v, *args, seg, chunk)
    np.testing.assert_allclose(out, dense, atol=1e-6, err_msg=f"segment={seg} chunk={chunk}")


# ------------------------------------------------------------------------------------------------
# The full model: batched loss vs one decoder pass per block, causal mode = BLT.


def random_params(cfg: BLTConfig, seed: int = 0):
  """Random weights on the model's parameter tree without compiling `init` (saves ~10 s)."""
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    if path[-1].key == "scale":  # RMSNorm weights near 1
      return jnp.asarray(1 + 0.1 * rng.standard_normal(x.shape), x.dtype)
    fan_in = x.shape[0] if x.ndim > 1 else 1
    if path[-1].key == "embedding":
      fan_in = 1
    return jnp.asarray(rng.standard_normal(x.shape) / np.sqrt(fan_in), x.dtype)

  return jax.tree_util.tree_map_with_path(leaf, model.abstract_params(cfg))


@functools.cache
def setup(block_input: str = "tok_embeddings"):
  cfg = tiny_cfg(block_input, hashed=block_input == "encoder_states")
  params = random_params(cfg)
  b = hand_batch()
  rng = np.random.default_rng(0)
  b["ids"] = np.where(b["valid"] & (b["ids"] > 3), rng.integers(4, 40, (2, S)), b["ids"]).astype(
    np.int32)
  return cfg, params, b


@functools.cache
def fwd(block_input: str = "tok_embeddings", with_blocks: bool = True, clean_segment=None,
        block_chunk=None, block_prefix=None):
  """One compiled forward per layout, shared by the tests: (params, batch, t) -> outputs.

  Default layouts: dense clean attention; blocks by the gathered window for tok_embeddings and by
  the masked full prefix for encoder_states, so the reference test covers both kernels.
  """
  cfg = setup(block_input)[0]
  block_prefix = block_prefix or ("gather" if block_input == "tok_embeddings" else "dense")
  return jit(lambda pp, bb, t: diffusion.bltd_forward(
    pp, cfg, bb, jax.random.key(2), max_patches=S + 1, t=t, with_blocks=with_blocks,
    clean_segment=clean_segment, block_chunk=block_chunk, block_prefix=block_prefix))


@functools.cache
def stages(block_input: str = "tok_embeddings"):
  """model.py's own encoder + global stages (jitted): h_enc, latents o, byte_arrays."""
  cfg, params, b = setup(block_input)
  ids, valid, doc, start = (jnp.asarray(b[k]) for k in ("ids", "valid", "doc_ids", "start"))
  pos = jnp.broadcast_to(jnp.arange(S)[None, :], (2, S))

  @jit
  def run(params):
    a = model.byte_arrays(start, ids, valid, S + 1)
    h, xg = model.encode(params, cfg, ids, pos, doc, valid, a["patch_ids"], S + 1)
    o = model.global_latents(params, cfg, xg, a["patch_pos"], a["patch_doc"], a["patch_valid"])
    return h, o, a

  return run(params)


def reference_block_logits(params, cfg, b, out, p):
  """Block logits from one dense decoder pass over [clean S ; block m] per (row, block)."""
  ids, valid = jnp.asarray(b["ids"]), jnp.asarray(b["valid"])
  h, o, a = stages(cfg.diffusion.block_input)
  bl = jax.tree.map(np.asarray, out["blocks"])
  noisy = np.asarray(out["noisy_BxMxZ"])
  mod = model.blt_module(cfg)
  run = lambda fn, *args: mod.apply({"params": model.blt_params(params)}, *args, method=fn)

  @jit
  def encoder_states(e_1xNxD, pos_1xN, mask_1xNxN):
    def f(m, x):
      return run_stack(m.local_encoder.layers, x, pos_1xN, mask_1xNxN)[0]
    return run(f, e_1xNxD)

  @jit
  def decoder(x_1xNxD, pos_1xN, lat_1xN, mask_1xNxN, o_1xPxD):
    def f(m, x):
      dec = m.local_decoder
      kvs = dec.latent_kv(o_1xPxD)
      x = run_stack(dec.layers, x, pos_1xN, mask_1xNxN,
                    cross=lambda i, h: dec.cross(i, h, kvs[i], lat_1xN))[0]
      return dec.head(x)
    return run(f, x_1xNxD)

  embed = jit(lambda i, p_, v: run(lambda m, *r: m.local_encoder.embed(*r), i, p_, v))
  logits = np.zeros(noisy.shape + (260,), np.float32)
  clean = np.zeros((2, S, 260), np.float32)
  for r in range(2):
    for m in np.flatnonzero(bl["exists_BxM"][r]):
      s_p = int(bl["start_BxM"][r, m])
      bpos = s_p + np.arange(Z)
      mask = numpy_mask(b, bl, r, m, W, WB)[None]
      allpos = np.concatenate([np.arange(S), bpos])[None]
      if cfg.diffusion.block_input == "tok_embeddings":
        table = params["local_encoder"]["tok_embeddings"]["embedding"]
        hb = table[np.where(bl["valid_BxMxZ"][r, m], noisy[r, m], 0)][None]
      else:  # embed the virtual row "clean prefix + corrupted block", then the encoder layers
        vids = np.concatenate([b["ids"][r, :s_p], noisy[r, m], np.zeros(S - s_p, np.int32)])
        vvalid = np.concatenate([b["valid"][r, :s_p], bl["valid_BxMxZ"][r, m],
                                 np.zeros(S - s_p, bool)])
        e_blk = embed(vids[None], np.arange(S + Z)[None], vvalid[None])[:, s_p:s_p + Z]
        e_row = embed(np.pad(ids[r:r + 1], ((0, 0), (0, Z))), np.arange(S + Z)[None],
                      np.pad(valid[r:r + 1], ((0, 0), (0, Z))))[:, :S]
        hb = encoder_states(jnp.concatenate([e_row, e_blk], axis=1), allpos, mask)[:, S:]
      x = jnp.concatenate([h[r:r + 1], hb], axis=1)
      lat = np.concatenate([np.asarray(a["dec_ids"][r]), np.full(Z, m)])[None]
      lg = np.asarray(decoder(x, allpos, lat, mask, o[r:r + 1]))[0]
      logits[r, m] = lg[S:]
      clean[r] = lg[:S]
  return logits, clean


@pytest.mark.parametrize("block_input", ["tok_embeddings", "encoder_states"])
def test_batched_loss_equals_per_block_reference(block_input):
  cfg, params, b = setup(block_input)
  p = S + 1
  out = fwd(block_input)(params, b, 0.6)
  ref_blocks, ref_clean = reference_block_logits(params, cfg, b, out, p)
  got = np.asarray(out["block_logits_BxMxZxV"])
  sel = np.asarray(out["blocks"]["valid_BxMxZ"])
  np.testing.assert_allclose(got[sel], ref_blocks[sel], atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(out["clean_logits_BxSxV"])[b["valid"]],
                             ref_clean[b["valid"]], atol=1e-5, rtol=1e-5)
  # The loss from reference logits, assembled by hand (§3.6), matches to 1e-5.
  mask = np.asarray(out["mask_BxMxZ"])
  assert mask.sum() > 4
  tgt = np.asarray(out["blocks"]["ids_BxMxZ"])
  logp = jax.nn.log_softmax(jnp.asarray(ref_blocks), axis=-1)
  nll_b = -np.take_along_axis(np.asarray(logp), tgt[..., None], axis=-1)[..., 0]
  logp_c = np.asarray(jax.nn.log_softmax(jnp.asarray(ref_clean), axis=-1))
  nxt = np.concatenate([b["ids"][:, 1:], np.zeros((2, 1), np.int32)], axis=1)
  tv = np.concatenate([b["valid"][:, 1:], np.zeros((2, 1), bool)], axis=1) & (nxt != BOS_ID)
  nll_c = -np.take_along_axis(logp_c, nxt[..., None], axis=-1)[..., 0]
  sum_c, sum_m = nll_c[tv].sum(), nll_b[mask].sum() / 0.6
  loss_of = jit(diffusion.loss_from_outputs, static_argnums=0)
  loss, m = loss_of(cfg, b, out)
  np.testing.assert_allclose(loss, (sum_c + sum_m) / tv.sum(), rtol=1e-5)
  np.testing.assert_allclose(m["masked_loss"], nll_b[mask].mean(), rtol=1e-5)
  np.testing.assert_allclose(m["clean_loss"], nll_c[tv].mean(), rtol=1e-5)
  cfg2 = cfg.replace(diffusion=dataclasses.replace(cfg.diffusion, loss_norm="per_stream_mean"))
  loss2, _ = loss_of(cfg2, b, out)
  n_target = np.asarray(out["blocks"]["target_BxMxZ"]).sum()
  np.testing.assert_allclose(loss2, sum_c / tv.sum() + sum_m / n_target, rtol=1e-5)


def test_causal_mode_is_blt_and_independent_of_blocks():
  cfg, params, b = setup()
  p = S + 1
  dense = fwd()(params, b, 0.6)
  with_b = np.asarray(dense["clean_logits_BxSxV"])
  without_b = np.asarray(fwd(with_blocks=False)(params, b, 0.6)["clean_logits_BxSxV"])
  np.testing.assert_array_equal(with_b, without_b)  # the clean stream never reads the blocks
  lengths = jnp.asarray(b["valid"].sum(1))
  blt = jit(lambda pp: model.forward(pp, cfg, jnp.asarray(b["ids"]), jnp.asarray(b["start"]),
                                         lengths, p, jnp.asarray(b["doc_ids"])))(params)
  np.testing.assert_allclose(with_b[b["valid"]], np.asarray(blt)[b["valid"]], atol=1e-6,
                             rtol=1e-6)


def test_decode_blocks_reuses_training_blocks():
  """The inference entry point (blocks vs a clean K/V cache) gives the training block logits."""
  cfg, params, b = setup()
  out = fwd()(params, b, 0.6)
  valid, doc = jnp.asarray(b["valid"]), jnp.asarray(b["doc_ids"])
  pos = jnp.broadcast_to(jnp.arange(S)[None, :], (2, S))
  h, o, a = stages()
  clean, kv = jit(lambda pp: bltd_reference.clean_decoder_kv(pp, cfg, h, pos, doc, valid, o,
                                                            a["dec_ids"]))(params)
  np.testing.assert_allclose(clean, out["clean_logits_BxSxV"], atol=1e-6)
  bl = out["blocks"]
  nm = bl["start_BxM"].shape[1]
  row = 0  # a one-document row: the cache's validity is the row's
  dec = jit(bltd_reference.decode_blocks, static_argnums=1)
  got = dec(params, cfg, out["noisy_BxMxZ"][row:1], bl["pos_BxMxZ"][row:1],
            bl["valid_BxMxZ"][row:1], bl["start_BxM"][row:1], o[row:1, :nm],
            [(k[row:1], v[row:1]) for k, v in kv], pos[row:1], valid[row:1])
  sel = np.asarray(bl["valid_BxMxZ"][row])
  np.testing.assert_allclose(np.asarray(got)[0][sel],
                             np.asarray(out["block_logits_BxMxZxV"][row])[sel], atol=1e-5)


def test_patch_budget_cut():
  b = hand_batch()
  start, n = jit(losses.truncate_to_patches, static_argnums=2)(
    jnp.asarray(b["start"]), jnp.asarray(b["valid"]).sum(1), 6)
  valid = jnp.asarray(b["valid"]) & (jnp.arange(S)[None] < n[:, None])
  # Row 0 has 7 starts before its end: the 7th (14) becomes the next-token slot, as in BLT.
  np.testing.assert_array_equal(np.asarray(valid).sum(1), [14, 10])
  np.testing.assert_array_equal(np.flatnonzero(start[0]), [0, 1, 3, 4, 8, 13, 14])
  np.testing.assert_array_equal(start[1], b["start"][1])
  bl = blocks(dict(b, start=np.asarray(start), valid=np.asarray(valid)), 5)
  np.testing.assert_array_equal(bl["start_BxM"], [[1, 3, 4, 8, 13], [1, 4, 6, 7, S]])
  np.testing.assert_array_equal(bl["valid_BxMxZ"][0, 4], [1, 0, 0, 0])  # 14, 15 are cut


def test_chunked_remat_loss_and_gradients():
  """Segment clean attention + chunked blocks + remat: same loss as the dense layout; grads."""
  cfg, params, b = setup()
  dense_loss, dense_m = jit(diffusion.loss_from_outputs, static_argnums=0)(
    cfg, b, fwd()(params, b, 0.6))
  cfg = cfg.replace(remat="full")
  b = dict(b, score=np.ones((2, S), bool))
  fn = jit(jax.value_and_grad(lambda pp: diffusion.bltd_loss(
    pp, cfg, b, jax.random.key(2), max_patches=S + 1, t=0.6, clean_segment=3, block_chunk=2),
    has_aux=True))
  (loss, m), grads = fn(params)
  np.testing.assert_allclose(loss, dense_loss, rtol=1e-5)
  for k in ("masked_loss", "clean_loss", "n_masked", "n_blocks", "nll_bytes_sum"):
    np.testing.assert_allclose(m[k], dense_m[k], rtol=1e-5, err_msg=k)
  assert float(m["weight"]) == float(m["n_bytes"]) + float(m["n_eos"])
  assert float(m["n_dropped_blocks"]) == 0 and float(m["n_blocks"]) == 6 + 4
  assert 0 <= float(m["masked_acc"]) <= 1 and float(m["n_masked"]) > 0
  assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
  table = grads["local_encoder"]["tok_embeddings"]["embedding"]
  assert float(jnp.abs(table[MASK_ID]).sum()) > 0  # the MASK row learns


def dense_reference_loss(params, cfg, b, out):
  """BLT-D's loss from one dense pass per stack over [clean S ; all blocks] under the §3.5 mask
  (`bltd_reference.dense_reference_mask`): no streams, kernels, chunks or remat. Block inputs
  of "encoder_states" embed the virtual row [clean prefix ; corrupted block] (hash n-grams)."""
  ids, valid, doc, start = (jnp.asarray(b[k]) for k in ("ids", "valid", "doc_ids", "start"))
  bl = jax.tree.map(np.asarray, out["blocks"])
  noisy = np.asarray(out["noisy_BxMxZ"])
  nb, nm, z = noisy.shape
  pos = jnp.broadcast_to(jnp.arange(S)[None, :], (nb, S))
  allpos = jnp.concatenate([pos, jnp.asarray(bl["pos_BxMxZ"]).reshape(nb, nm * z)], axis=1)
  lat = jnp.concatenate([jnp.zeros((nb, S), jnp.int32), jnp.broadcast_to(
    jnp.repeat(jnp.arange(nm, dtype=jnp.int32), z)[None], (nb, nm * z))], axis=1)
  mask = lambda w: bltd_reference.dense_reference_mask(  # noqa: E731
    pos, doc, valid, bl["start_BxM"], bl["doc_BxM"], bl["valid_BxMxZ"], w, WB)
  blk_ids = np.where(bl["valid_BxMxZ"], noisy, 0)

  def run(m):
    enc, dec = m.local_encoder, m.local_decoder
    a = model.byte_arrays(start, ids, valid, S + 1)
    x = enc.embed(ids, pos, valid)
    if cfg.diffusion.block_input == "tok_embeddings":  # blocks skip the encoder
      hb = enc.tok_embeddings(jnp.asarray(blk_ids)).reshape(nb, nm * z, -1)
      x = run_stack(enc.layers, x, pos, mask(cfg.encoder.window)[:, :S, :S])[0]
    else:
      rows = []
      for r in range(nb):
        for j in range(nm):
          s_p = min(int(bl["start_BxM"][r, j]), S)
          vids = np.concatenate([b["ids"][r, :s_p], blk_ids[r, j], np.zeros(S - s_p, np.int32)])
          vval = np.concatenate([b["valid"][r, :s_p], bl["valid_BxMxZ"][r, j],
                                 np.zeros(S - s_p, bool)])
          rows.append(enc.embed(jnp.asarray(vids)[None], jnp.arange(S + z)[None],
                                jnp.asarray(vval)[None])[0, s_p:s_p + z])
      hb = jnp.stack(rows).reshape(nb, nm * z, -1)
      y = run_stack(enc.layers, jnp.concatenate([x, hb], axis=1), allpos,
                    mask(cfg.encoder.window))[0]
      x, hb = y[:, :S], y[:, S:]
    o = m.global_transformer(enc.pool(x, a["patch_ids"], valid, S + 1), a["patch_pos"],
                             a["patch_doc"], a["patch_valid"])
    kvs = dec.latent_kv(o)
    lat_all = lat.at[:, :S].set(a["dec_ids"])
    y = run_stack(dec.layers, jnp.concatenate([x, hb], axis=1), allpos, mask(cfg.decoder.window),
                  cross=lambda i, h: dec.cross(i, h, kvs[i], lat_all))[0]
    logits = dec.head(y)
    return logits[:, :S], logits[:, S:].reshape(nb, nm, z, -1)

  clean, blocks = model.apply_blt(params, cfg, run)
  return diffusion.loss_from_outputs(cfg, b, dict(out, clean_logits_BxSxV=clean,
                                                  block_logits_BxMxZxV=blocks))[0]


@pytest.mark.parametrize("block_input", ["tok_embeddings", "encoder_states"])
def test_remat_chunked_gradients_equal_dense_reference(block_input):
  """Gradients of the training loss (both streams through the stages, each layer rematerialised,
  segment clean attention, chunked blocks, both block-prefix kernels) equal those of the dense
  one-pass reference, for every parameter."""
  cfg, params, b = setup(block_input)
  out = jax.tree.map(np.asarray, fwd(block_input)(params, b, 0.6))
  want = jit(jax.grad(lambda pp: dense_reference_loss(pp, cfg, b, out)))(params)
  for prefix in ("gather", "dense"):
    got = jit(jax.grad(lambda pp, prefix=prefix: diffusion.bltd_loss(
      pp, cfg.replace(remat="full"), b, jax.random.key(2), max_patches=S + 1, t=0.6,
      clean_segment=3, block_chunk=2, block_prefix=prefix)[0]))(params)
    flat = jax.tree_util.tree_flatten_with_path(want)[0]
    for (path, w), g in zip(flat, jax.tree.leaves(got), strict=True):
      scale = float(np.max(np.abs(w)))
      assert scale > 0, jax.tree_util.keystr(path)
      np.testing.assert_allclose(g, w, atol=2e-5 * scale, rtol=0,
                                 err_msg=f"{prefix} {jax.tree_util.keystr(path)}")
