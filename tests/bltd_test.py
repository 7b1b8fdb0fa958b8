"""BLT-D and BLT-DV decoding (bltjax/decoding/bltd.py, bltdv.py): cached BLT-D equals a
full-recompute reference step for step (block logits at every denoising step, then ids); BLT-DV
equals greedy causal decoding of the same weights for every commit rule."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax.config import EOS_ID, MASK_ID, DiffusionConfig
from bltjax.decoding import bltd, engine, generation
from bltjax.modeling import model, patching
from tests import bltd_reference
from tests.model_fixtures import BLOCK_SIZE, PROMPTS, bltd_setup

Z = BLOCK_SIZE
WIDTH = 128  # the reference's fixed row length (one compilation)
setup = bltd_setup


@functools.partial(jax.jit, static_argnames=("cfg",))
def _reference_prefix(params, cfg, ids_1xS, n, forced_1xS1):
  """Full recompute over ids[:n]: the decoder's clean K/V and the latent of byte n-1's patch.

  Patch starts: the mode's rule, plus the forced starts (force_boundary block starts), then
  max_patch_length over both.
  """
  ids, lengths, pos, valid, doc = model.defaults(ids_1xS, n[None])
  h_ent = model.entropies(params, cfg, ids, lengths)
  start = patching.rule_patch_starts(cfg.patcher, ids_BxS=ids, lengths_B=lengths, H_BxS=h_ent)
  start |= forced_1xS1 & (jnp.arange(ids.shape[1] + 1)[None] <= n)
  if cfg.patcher.max_patch_length is not None:
    start = patching.apply_max_patch_length(start, lengths, cfg.patcher.max_patch_length)
  p = ids.shape[1] + 1
  a = model.byte_arrays(start, ids, valid, p)
  h, xg = model.encode(params, cfg, ids, pos, doc, valid, a["patch_ids"], p)
  o = model.global_latents(params, cfg, xg, a["patch_pos"], a["patch_doc"], a["patch_valid"])
  _, kv = bltd_reference.clean_decoder_kv(params, cfg, h, pos, doc, valid, o, a["dec_ids"])
  lat = o[:, a["patch_ids"][0, n - 1]][:, None]  # [1, 1, Dg]
  return kv, pos, valid, lat


def _reference_block_h(params, cfg, ids_1xS, n, block_1xZ):
  """encoder_states block inputs: the local encoder over the virtual row [ids[:n] ; block] with
  the §3.5 mask (clean rows causal in the encoder window, block rows onto clean keys in
  [n - W_b, n) and bidirectionally onto the block), written out densely."""
  s = ids_1xS.shape[1]
  j = jnp.arange(s + Z)
  padded = jnp.pad(ids_1xS[0], (0, Z))
  vids = jnp.where(j < n, padded, jnp.where(j < n + Z, block_1xZ[0, jnp.clip(j - n, 0, Z - 1)],
                                            0))[None]
  valid = (j < n + Z)[None]
  qi, kj = j[:, None], j[None, :]
  clean = (qi < n) & (kj <= qi) & (qi - kj < cfg.encoder.window)
  wb = cfg.diffusion.block_prefix_window
  block = (qi >= n) & (qi < n + Z) & (((kj < n) & (kj >= n - wb)) | ((kj >= n) & (kj < n + Z)))
  mask = (clean | block)[None]

  def run(m, vids):
    x = m.local_encoder.embed(vids, j[None], valid)
    for layer in m.local_encoder.layers:
      x = layer(x, j[None], mask)[0]
    return jax.lax.dynamic_slice_in_dim(x, n, Z, axis=1)

  return model.blt_module(cfg).apply({"params": model.blt_params(params)}, vids, method=run)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _reference_block(params, cfg, block_1xZ, n, kv, pos, valid, lat, ids_1xS):
  bpos = (n + jnp.arange(Z))[None, None]
  h = None
  if cfg.diffusion.block_input == "encoder_states":
    h = _reference_block_h(params, cfg, ids_1xS, n, block_1xZ)[:, None]
  return bltd_reference.decode_blocks(params, cfg, block_1xZ[:, None], bpos,
                                      jnp.ones((1, 1, Z), bool), n[None, None], lat, kv, pos,
                                      valid, block_h_BxMxZxD=h)[:, 0]


def _mask(logits, masked, rule: bltd.BlockRule):
  return bltd.commit_mask(logits, masked, rule.kind, rule.alpha, rule.gamma, rule.eb_rule)


def generate(params, cfg, prompts, *, method, rule=None, block_latent="partial_last_patch",
             seeds=None, temperature=0.0, top_p=1.0, **kw):
  rule = rule or bltd.BlockRule()
  opt = generation.Options(rule=rule.kind, alpha=rule.alpha, gamma=rule.gamma,
                           eb_rule=rule.eb_rule, block_latent=block_latent,
                           temperature=temperature, top_p=top_p)
  return generation.generate(params, cfg, prompts, method=method, options=opt, seeds=seeds, **kw)


def reference_bltd(params, cfg, prompt: bytes, max_new: int, rule: bltd.BlockRule,
                   block_latent: str = "partial_last_patch"):
  """BLT-D by full recompute: every block re-patches and re-runs the model over the prefix
  (with a forced patch start at every block start for "force_boundary")."""
  ids = generation.encode_prompt(prompt)
  out, steps = [], 0
  forced = np.zeros((1, WIDTH + 1), bool)
  while len(out) < max_new:
    n = jnp.asarray(len(ids), jnp.int32)
    if block_latent == "force_boundary":
      forced[0, len(ids)] = True
    arr = np.zeros((1, WIDTH), np.int32)
    arr[0, :len(ids)] = ids
    kv, pos, valid, lat = _reference_prefix(params, cfg, jnp.asarray(arr), n,
                                            jnp.asarray(forced))
    block = np.full((1, Z), MASK_ID, np.int32)
    while (block == MASK_ID).any():
      logits = _reference_block(params, cfg, jnp.asarray(block), n, kv, pos, valid, lat,
                                jnp.asarray(arr))
      pick = np.asarray(_mask(logits, jnp.asarray(block == MASK_ID), rule))
      block = np.where(pick, np.asarray(jnp.argmax(logits, -1)), block)
      steps += 1
    for t in block[0].tolist():
      out.append(t)
      ids.append(t)
      if t == EOS_ID or len(out) == max_new:
        return out, steps
  return out, steps


def test_commit_rules_on_hand_cases():
  logits = jnp.log(jnp.asarray([[[0.9, 0.1], [0.6, 0.4], [0.5, 0.5], [0.99, 0.01]]]))
  masked = jnp.asarray([[True, True, True, False]])
  conf = _mask(logits, masked, bltd.BlockRule("confidence", alpha=0.7))
  np.testing.assert_array_equal(conf, [[1, 0, 0, 0]])  # 0.9 > 0.7; slot 3 is not masked
  none = _mask(logits, masked, bltd.BlockRule("confidence", alpha=0.95))
  np.testing.assert_array_equal(none, [[1, 0, 0, 0]])  # nothing qualifies: the most confident
  one = _mask(logits, masked, bltd.BlockRule("one_step"))
  np.testing.assert_array_equal(one, masked)
  h = [0.325, 0.673, 0.693]  # entropies (nats) of the masked slots, ascending
  eb = lambda g, r: np.asarray(_mask(logits, masked, bltd.BlockRule(  # noqa: E731
    "entropy", gamma=g, eb_rule=r)))
  np.testing.assert_array_equal(eb(0.0, "sum_minus_max"), [[1, 0, 0, 0]])
  np.testing.assert_array_equal(eb(h[0] + 0.01, "sum_minus_max"), [[1, 1, 0, 0]])
  np.testing.assert_array_equal(eb(h[0] + h[1] + 0.01, "sum_minus_max"), [[1, 1, 1, 0]])
  np.testing.assert_array_equal(eb(h[0] + 0.01, "cumulative"), [[1, 0, 0, 0]])
  np.testing.assert_array_equal(eb(h[0] + h[1] + 0.01, "cumulative"), [[1, 1, 0, 0]])
  with pytest.raises(ValueError, match="rule.kind"):
    bltd.BlockRule("topk")


@pytest.mark.parametrize("rule,wb,block_input,latent", [
  (bltd.BlockRule("confidence", alpha=0.3), 16, "tok_embeddings", "partial_last_patch"),
  (bltd.BlockRule("entropy", gamma=1.5), 8, "tok_embeddings", "partial_last_patch"),  # narrower
  (bltd.BlockRule("one_step"), 16, "tok_embeddings", "partial_last_patch"),
  (bltd.BlockRule("confidence", alpha=0.3), 8, "encoder_states", "partial_last_patch"),
  (bltd.BlockRule("confidence", alpha=0.3), 16, "tok_embeddings", "force_boundary"),
])
def test_bltd_cached_equals_full_recompute(rule, wb, block_input, latent):
  cfg, params = setup(wb, block_input)
  prompts = [PROMPTS[0], PROMPTS[2][:70]]
  res = generate(params, cfg, prompts, max_new=24, method="bltd", rule=rule, block_latent=latent)
  for prompt, r in zip(prompts, res, strict=True):
    ref, steps = reference_bltd(params, cfg, prompt, 24, rule, latent)
    got = r.new_ids + ([EOS_ID] if r.reason == "eos" else [])
    assert got == ref, (prompt, got, ref)
    blocks = -(-len(got) // Z)
    assert r.nfe_dec == steps and r.nfe_enc_global == r.cycles == blocks
    # Passes: the denoising steps and one forward per block (its decoder pass caches the block
    # and its global pass gives the next block's latent); force_boundary re-runs byte n-1.
    redo = r.passes["decoder"] - steps - blocks
    assert r.passes["global"] == blocks == r.passes["entropy"]
    assert r.passes["encoder"] == blocks + redo + (steps if block_input == "encoder_states"
                                                   else 0)
    assert redo == 0 if latent == "partial_last_patch" else 0 <= redo <= blocks
    if rule.kind == "one_step":
      assert r.nfe_dec == r.cycles


@pytest.mark.parametrize("rule", [
  bltd.BlockRule("entropy", gamma=1.5), bltd.BlockRule("entropy", gamma=0.5, eb_rule="cumulative"),
  bltd.BlockRule("confidence", alpha=0.3), bltd.BlockRule("one_step")])
def test_bltdv_equals_greedy_causal_decoding(rule):
  cfg, params = setup()
  causal = generation.generate(params, cfg, PROMPTS, method="ar", max_new=40)
  dv = generate(params, cfg, PROMPTS, max_new=40, method="bltdv", rule=rule)
  for x, y in zip(causal, dv, strict=True):
    assert y.new_ids == x.new_ids and y.reason == x.reason
    assert y.nfe_enc_global == y.cycles == y.passes["global"] == y.passes["entropy"]
    assert y.drafted == Z * y.cycles and y.cycles < y.nfe_dec <= y.cycles * (Z + 1)
    # x0's pass, the denoising steps (nfe_dec - cycles), the verification.
    assert y.passes["decoder"] == y.nfe_dec + y.cycles
    assert y.passes["encoder"] == 2 * y.cycles
    if rule.kind == "one_step":
      assert y.nfe_dec == 2 * y.cycles
  assert sum(y.cycles for y in dv) < sum(len(x.new_ids) for x in causal)


def test_block_decoding_refuses_what_it_cannot_decode():
  cfg, params = setup()
  with pytest.raises(ValueError, match="diffusion.block_size"):
    generate(params, cfg.replace(diffusion=DiffusionConfig()), [b"x"], max_new=2, method="bltd")
  wide = cfg.replace(diffusion=dataclasses.replace(cfg.diffusion, block_prefix_window=None))
  with pytest.raises(ValueError, match="diffusion.block_prefix_window"):
    generate(params, wide, [b"x"], max_new=2, method="bltd")
  narrow = cfg.replace(encoder=dataclasses.replace(cfg.encoder, window=8),
                       diffusion=dataclasses.replace(cfg.diffusion, block_input="encoder_states"))
  with pytest.raises(ValueError, match="the encoder ring"):
    generate(params, narrow, [b"x"], max_new=2, method="bltd")
  with pytest.raises(ValueError, match="method"):
    generate(params, cfg, [b"x"], max_new=2, method="bltx")
  with pytest.raises(ValueError, match="block_latent"):
    generate(params, cfg, [b"x"], max_new=2, method="bltdv", block_latent="force_boundary")


def test_bltd_sampling_is_seeded_and_batch_independent():
  cfg, params = setup()
  sc = dict(temperature=1.0, top_p=0.9)
  rule = bltd.BlockRule("confidence", alpha=0.3)
  kw = dict(max_new=24, method="bltd", rule=rule, **sc)
  alone = generate(params, cfg, [PROMPTS[0]], seeds=[7], **kw)[0]
  batch = generate(params, cfg, [PROMPTS[2][:70], PROMPTS[0]], seeds=[1, 7], **kw)
  assert batch[1].new_ids == alone.new_ids
  other = generate(params, cfg, [PROMPTS[0]], seeds=[8], **kw)[0]
  greedy = generate(params, cfg, [PROMPTS[0]], max_new=24, method="bltd", rule=rule)[0]
  assert other.new_ids != alone.new_ids and greedy.new_ids not in (alone.new_ids, other.new_ids)
  with pytest.raises(ValueError, match="sampled BLT-DV needs --rule one_step"):
    generate(params, cfg, [PROMPTS[0]], max_new=4, method="bltdv", **sc)


@pytest.mark.parametrize("block_input", ["tok_embeddings", "encoder_states"])
def test_bltd_block_logits_equal_reference_at_every_step(block_input):
  """Step by step: the cached block logits (engine caches, the open latent the previous forward
  left) equal the full-recompute reference's at every denoising step of several blocks."""
  cfg, params = setup(8, block_input)
  rule = bltd.BlockRule("confidence", alpha=0.3)
  prompt = PROMPTS[2][:50]
  ids = generation.encode_prompt(prompt)
  arr = np.zeros((1, 64), np.int32)
  arr[0, :len(ids)] = ids
  spec = engine.CacheSpec(max_patches=128, max_len=WIDTH, max_q=Z)
  st = engine.prefill(params, cfg, jnp.asarray(arr), jnp.asarray([len(ids)], jnp.int32), spec,
                      True)
  active = jnp.ones((1,), bool)
  n_steps = 0
  for _ in range(3):
    n = jnp.asarray(len(ids), jnp.int32)
    ref_arr = np.zeros((1, WIDTH), np.int32)
    ref_arr[0, :len(ids)] = ids
    kv, pos, valid, lat = _reference_prefix(params, cfg, jnp.asarray(ref_arr), n,
                                            jnp.zeros((1, WIDTH + 1), bool))
    block = np.full((1, Z), MASK_ID, np.int32)
    while (block == MASK_ID).any():
      got = bltd.block_logits(params, cfg, st, jnp.asarray(block), st.n, st.open_k, st.open_v)
      want = _reference_block(params, cfg, jnp.asarray(block), n, kv, pos, valid, lat,
                              jnp.asarray(ref_arr))
      np.testing.assert_allclose(got, want, atol=2e-5, rtol=2e-5)
      pick = np.asarray(_mask(want, jnp.asarray(block == MASK_ID), rule))
      block = np.where(pick, np.asarray(jnp.argmax(want, -1)), block)
      n_steps += 1
    ext = engine.forward(params, cfg, st, jnp.asarray(block), jnp.ones((1, Z), bool),
                         open_latent=True)
    st = engine.commit(ext, jnp.asarray([Z - 1]), active)
    ids += block[0].tolist()
  assert n_steps > 3  # several steps per block on average, or the check means little
