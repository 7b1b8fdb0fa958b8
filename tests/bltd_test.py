"""BLT-D and BLT-DV decoding (bltjax/block_decoding.py): cached BLT-D equals a full-recompute
reference step for step; BLT-DV equals greedy causal decoding of the same weights."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax import block_decoding as BD
from bltjax import decoding as D
from bltjax import diffusion, patching
from bltjax import model as M
from bltjax.config import EOS_ID, MASK_ID, DiffusionConfig
from tests.decoding_test import PROMPTS
from tests.model_fixtures import median_threshold, tiny_config, tiny_params

Z = 4
WIDTH = 128  # the reference's fixed row length (one compilation)


@functools.cache
def setup(block_prefix_window: int = 16, block_input: str = "tok_embeddings"):
  cfg = tiny_config(window=16).replace(diffusion=DiffusionConfig(
    block_size=Z, block_prefix_window=block_prefix_window, block_input=block_input))
  params = tiny_params(cfg)
  th = median_threshold(params, cfg)
  return cfg.replace(patcher=dataclasses.replace(cfg.patcher, threshold=th)), params


@functools.partial(jax.jit, static_argnames=("cfg",))
def _reference_prefix(params, cfg, ids_1xS, n, forced_1xS1):
  """Full recompute over ids[:n]: the decoder's clean K/V and the latent of byte n-1's patch.

  Patch starts: the mode's rule, plus the forced starts (force_boundary block starts), then
  max_patch_length over both.
  """
  ids, lengths, pos, valid, doc = M._defaults(ids_1xS, n[None])
  h_ent = M.entropies(params, cfg, ids, lengths)
  start = patching.rule_patch_starts(cfg.patcher, ids_BxS=ids, lengths_B=lengths, H_BxS=h_ent)
  start |= forced_1xS1 & (jnp.arange(ids.shape[1] + 1)[None] <= n)
  if cfg.patcher.max_patch_length is not None:
    start = patching.apply_max_patch_length(start, lengths, cfg.patcher.max_patch_length)
  p = ids.shape[1] + 1
  a = M.byte_arrays(start, ids, valid, p)
  h, xg = M.encode(params, cfg, ids, pos, doc, valid, a["patch_ids"], p)
  o = M.global_latents(params, cfg, xg, a["patch_pos"], a["patch_doc"], a["patch_valid"])
  _, kv = diffusion.clean_decoder_kv(params, cfg, h, pos, doc, valid, o, a["dec_ids"])
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
      x = layer(x, j[None], mask)
    return jax.lax.dynamic_slice_in_dim(x, n, Z, axis=1)

  return M.blt_module(cfg).apply({"params": M.blt_params(params)}, vids, method=run)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _reference_block(params, cfg, block_1xZ, n, kv, pos, valid, lat, ids_1xS):
  bpos = (n + jnp.arange(Z))[None, None]
  h = None
  if cfg.diffusion.block_input == "encoder_states":
    h = _reference_block_h(params, cfg, ids_1xS, n, block_1xZ)[:, None]
  return diffusion.decode_blocks(params, cfg, block_1xZ[:, None], bpos, jnp.ones((1, 1, Z), bool),
                                 n[None, None], lat, kv, pos, valid, block_h_BxMxZxD=h)[:, 0]


def reference_bltd(params, cfg, prompt: bytes, max_new: int, rule: BD.BlockRule,
                   block_latent: str = "partial_last_patch"):
  """BLT-D by full recompute: every block re-patches and re-runs the model over the prefix
  (with a forced patch start at every block start for "force_boundary")."""
  ids = D.encode_prompt(prompt)
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
      pick = np.asarray(BD.commit_mask(logits, jnp.asarray(block == MASK_ID), rule))
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
  conf = BD.commit_mask(logits, masked, BD.BlockRule("confidence", alpha=0.7))
  np.testing.assert_array_equal(conf, [[1, 0, 0, 0]])  # 0.9 > 0.7; slot 3 is not masked
  none = BD.commit_mask(logits, masked, BD.BlockRule("confidence", alpha=0.95))
  np.testing.assert_array_equal(none, [[1, 0, 0, 0]])  # nothing qualifies: the most confident
  one = BD.commit_mask(logits, masked, BD.BlockRule("one_step"))
  np.testing.assert_array_equal(one, masked)
  h = [0.325, 0.673, 0.693]  # entropies (nats) of the masked slots, ascending
  eb = lambda g, r: np.asarray(BD.commit_mask(logits, masked, BD.BlockRule(  # noqa: E731
    "entropy", gamma=g, eb_rule=r)))
  np.testing.assert_array_equal(eb(0.0, "sum_minus_max"), [[1, 0, 0, 0]])
  np.testing.assert_array_equal(eb(h[0] + 0.01, "sum_minus_max"), [[1, 1, 0, 0]])
  np.testing.assert_array_equal(eb(h[0] + h[1] + 0.01, "sum_minus_max"), [[1, 1, 1, 0]])
  np.testing.assert_array_equal(eb(h[0] + 0.01, "cumulative"), [[1, 0, 0, 0]])
  np.testing.assert_array_equal(eb(h[0] + h[1] + 0.01, "cumulative"), [[1, 1, 0, 0]])
  with pytest.raises(ValueError, match="rule.kind"):
    BD.BlockRule("topk")


@pytest.mark.parametrize("rule,wb,block_input,latent", [
  (BD.BlockRule("confidence", alpha=0.3), 16, "tok_embeddings", "partial_last_patch"),
  (BD.BlockRule("entropy", gamma=1.5), 8, "tok_embeddings", "partial_last_patch"),  # narrower
  (BD.BlockRule("one_step"), 16, "tok_embeddings", "partial_last_patch"),
  (BD.BlockRule("confidence", alpha=0.3), 8, "encoder_states", "partial_last_patch"),
  (BD.BlockRule("confidence", alpha=0.3), 16, "tok_embeddings", "force_boundary"),
])
def test_bltd_cached_equals_full_recompute(rule, wb, block_input, latent):
  cfg, params = setup(wb, block_input)
  prompts = [PROMPTS[0], PROMPTS[2][:70]]
  res = BD.generate(params, cfg, prompts, max_new=24, method="bltd", rule=rule,
                    block_latent=latent)
  for prompt, r in zip(prompts, res, strict=True):
    ref, steps = reference_bltd(params, cfg, prompt, 24, rule, latent)
    got = r.new_ids + ([EOS_ID] if r.reason == "eos" else [])
    assert got == ref, (prompt, got, ref)
    assert r.nfe_dec == steps and r.nfe_enc == r.cycles == -(-len(got) // Z) == r.nfe_ent
    assert r.nfe_enc_byte == (steps if block_input == "encoder_states" else 0)
    if rule.kind == "one_step":
      assert r.nfe_dec == r.cycles


def test_bltdv_equals_greedy_causal_decoding():
  cfg, params = setup()
  ar = D.generate(params, cfg, PROMPTS, max_new=40)
  dv = BD.generate(params, cfg, PROMPTS, max_new=40, method="bltdv",
                   rule=BD.BlockRule("entropy", gamma=1.5))
  for x, y in zip(ar, dv, strict=True):
    assert y.new_ids == x.new_ids and y.reason == x.reason
    assert y.nfe_enc == y.cycles == y.nfe_ent == y.nfe_enc_byte and y.drafted == Z * y.cycles
    assert y.cycles < y.nfe_dec <= y.cycles * (Z + 1)
  assert sum(y.cycles for y in dv) < sum(len(x.new_ids) for x in ar)


def test_block_decoding_refuses_what_it_cannot_decode():
  cfg, params = setup()
  with pytest.raises(ValueError, match="diffusion.block_size"):
    BD.generate(params, cfg.replace(diffusion=DiffusionConfig()), [b"x"], max_new=2)
  wide = cfg.replace(diffusion=dataclasses.replace(cfg.diffusion, block_prefix_window=None))
  with pytest.raises(ValueError, match="diffusion.block_prefix_window"):
    BD.generate(params, wide, [b"x"], max_new=2)
  narrow = cfg.replace(encoder=dataclasses.replace(cfg.encoder, window=8),
                       diffusion=dataclasses.replace(cfg.diffusion, block_input="encoder_states"))
  with pytest.raises(ValueError, match="the encoder ring"):
    BD.generate(params, narrow, [b"x"], max_new=2)
  with pytest.raises(ValueError, match="method"):
    BD.generate(params, cfg, [b"x"], max_new=2, method="blts")
  with pytest.raises(ValueError, match="block_latent"):
    BD.generate(params, cfg, [b"x"], max_new=2, method="bltdv", block_latent="force_boundary")


def test_bltd_sampling_is_seeded_and_batch_independent():
  cfg, params = setup()
  sc = D.SamplingConfig(temperature=1.0, top_p=0.9)
  rule = BD.BlockRule("confidence", alpha=0.3)
  kw = dict(max_new=24, method="bltd", rule=rule, sc=sc)
  alone = BD.generate(params, cfg, [PROMPTS[0]], seeds=[7], **kw)[0]
  batch = BD.generate(params, cfg, [PROMPTS[2][:70], PROMPTS[0]], seeds=[1, 7], **kw)
  assert batch[1].new_ids == alone.new_ids
  other = BD.generate(params, cfg, [PROMPTS[0]], seeds=[8], **kw)[0]
  greedy = BD.generate(params, cfg, [PROMPTS[0]], max_new=24, method="bltd", rule=rule)[0]
  assert other.new_ids != alone.new_ids and greedy.new_ids not in (alone.new_ids, other.new_ids)
  with pytest.raises(ValueError, match="BLT-DV verifies"):
    BD.generate(params, cfg, [PROMPTS[0]], max_new=4, method="bltdv", sc=sc)
