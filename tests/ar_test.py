"""Cached AR decoding equals full recompute; sampling is batch-independent; counters."""


import numpy as np
import pytest

from bltjax.decoding import engine, generation
from bltjax.decoding.generation import Options
from tests.model_fixtures import PROMPTS, tiny_config
from tests.model_fixtures import blt_setup as _setup


def generate(params, cfg, prompts, **kw):
  opts = {k: kw.pop(k) for k in ("temperature", "top_k", "top_p") if k in kw}
  return generation.generate(params, cfg, prompts, method="ar", options=Options(**opts), **kw)


def _check_against_reference(cfg, params, prompts, max_new, width=256):
  res = generate(params, cfg, prompts, max_new=max_new)
  for prompt, r in zip(prompts, res, strict=True):
    ref = generation.generate_reference(params, cfg, prompt, max_new, width=width)
    got = r.new_ids + ([2] if r.reason == "eos" else [])
    assert got == ref[:len(got)], (prompt, got, ref)
    assert len(got) == len(ref) or r.reason != "length"
    assert r.nfe_dec == len(got)
    # One step per byte after the first (its logits come from the prefill); none after the last.
    steps = len(got) - 1
    assert r.passes == {"decoder": steps, "encoder": steps, "global": r.nfe_enc_global,
                        "entropy": steps if cfg.patcher.mode == "entropy" else 0}
  return res


@pytest.mark.parametrize("kw", [
  dict(window=16),  # generations and prompts cross the local window
  dict(window=16, max_patch_length=3, k=4),
  dict(window=32, mode="space", threshold=None),
])
def test_cached_greedy_equals_full_recompute(kw):
  cfg, params = _setup(**kw)
  res = _check_against_reference(cfg, params, PROMPTS, 40)
  # Several patches must actually close during generation for the test to mean anything.
  assert sum(r.nfe_enc_global for r in res) > 10


def test_long_prompt_crosses_window():
  cfg, params = _setup(window=16)
  prompts = [bytes(np.random.default_rng(3).integers(32, 127, 300).astype(np.uint8))]
  _check_against_reference(cfg, params, prompts, 24, width=512)


def test_seeded_sampling_independent_of_batch():
  cfg, params = _setup(window=16)
  sc = dict(temperature=1.0, top_k=50, top_p=0.9)
  alone = generate(params, cfg, [PROMPTS[0]], max_new=30, seeds=[7], **sc)[0]
  batch = generate(params, cfg, [PROMPTS[2], PROMPTS[0], PROMPTS[1]], max_new=30,
                   seeds=[1, 7, 3], **sc)
  assert batch[1].new_ids == alone.new_ids
  other = generate(params, cfg, [PROMPTS[0]], max_new=30, seeds=[8], **sc)[0]
  assert other.new_ids != alone.new_ids  # the seed matters


def test_stop_strings_and_budget():
  cfg, params = _setup(window=16)
  full = generate(params, cfg, [PROMPTS[0]], max_new=30)[0]
  if full.reason == "eos" or len(full.data) < 6:
    pytest.fail("fixture should generate at least 6 bytes without EOS")
  stop = full.data[3:5]
  cut = generate(params, cfg, [PROMPTS[0]], max_new=30, stops=(stop,))[0]
  assert cut.reason == "stop"
  assert full.data.startswith(cut.data) and stop not in cut.data
  short = generate(params, cfg, [PROMPTS[0], PROMPTS[1]], max_new=30, budgets=[3, 30])
  assert short[0].reason == "length" and len(short[0].new_ids) == 3
  assert short[0].new_ids == full.new_ids[:3]


def test_static_patching_is_refused():
  cfg = tiny_config(mode="static", threshold=None)
  with pytest.raises(ValueError, match="patcher.mode"):
    generate(None, cfg, [b"x"], max_new=2)  # refused before any weights are touched
  with pytest.raises(ValueError, match="method"):
    generation.generate(None, cfg, [b"x"], method="beam", max_new=2)


def test_stream_matches_batch():
  cfg, params = _setup(window=16)
  batch = generate(params, cfg, [PROMPTS[0]], max_new=30)[0]
  streamed = b"".join(generation.stream(params, cfg, PROMPTS[0], max_new=30))
  assert streamed == batch.data



def test_bltd_checkpoint_decodes_and_scores_as_blt(tmp_path):
  """A BLT-D checkpoint (byte table with the [MASK] row) is an ordinary causal BLT: saved and
  loaded, it generates and scores exactly like the same weights without that row."""
  import jax.numpy as jnp

  from bltjax import score, weights
  from bltjax.config import MASK_ID, DiffusionConfig

  cfg, params = _setup(window=16)
  table = params["local_encoder"]["tok_embeddings"]["embedding"]
  mask_row = jnp.asarray(np.random.default_rng(0).normal(size=(1, table.shape[1])), table.dtype)
  bltd = dict(params, local_encoder=dict(params["local_encoder"], tok_embeddings={
    "embedding": jnp.concatenate([table, mask_row])}))
  bltd_cfg = cfg.replace(diffusion=DiffusionConfig(block_size=8))
  weights.save_checkpoint(tmp_path / "bltd", bltd, bltd_cfg)
  cfg2, bltd = weights.load_checkpoint(tmp_path / "bltd")
  assert cfg2 == bltd_cfg and bltd["local_encoder"]["tok_embeddings"]["embedding"].shape[0] == \
    MASK_ID + 1
  got = generate(bltd, cfg2, PROMPTS, max_new=40)
  want = generate(params, cfg, PROMPTS, max_new=40)
  assert [r.new_ids for r in got] == [r.new_ids for r in want]
  assert [r.nfe_enc_global for r in got] == [r.nfe_enc_global for r in want]
  assert sum(len(r.new_ids) for r in got) > 40
  text = PROMPTS[2]
  s_d = score.score_bytes(bltd, cfg2, text, window=64)
  s_b = score.score_bytes(params, cfg, text, window=64)
  assert s_d["patches"] == s_b["patches"]
  np.testing.assert_allclose(s_d["nll_nats"], s_b["nll_nats"], rtol=1e-6)


def test_full_attention_stacks_keep_every_key():
  """window=None local stacks: the rings hold prompt + generation (they used to be sized from
  the prompt bucket and evicted keys that full causal attention still reads)."""
  cfg, params = _setup(window=None)
  _check_against_reference(cfg, params, [PROMPTS[0], PROMPTS[1]], 40)


def test_engine_forward_equals_training_forward():
  """`engine.forward` on an empty state (what prefill runs) gives the training forward's logits
  at every position, and the entropies of the entropy model."""
  import jax.numpy as jnp

  from bltjax.modeling import model

  cfg, params = _setup(window=16)
  ids = [generation.encode_prompt(p) for p in (PROMPTS[2], PROMPTS[0])]
  s = 160
  arr = np.zeros((2, s), np.int32)
  for i, x in enumerate(ids):
    arr[i, :len(x)] = x
  lengths = jnp.asarray([len(x) for x in ids], jnp.int32)
  valid = jnp.arange(s)[None] < lengths[:, None]
  spec = engine.CacheSpec(max_patches=256, max_len=s)
  st = engine.empty_state(params, cfg, 2, spec)
  ext = engine.forward(params, cfg, st, jnp.asarray(arr), valid, fresh=True)
  want = model.forward(params, cfg, jnp.asarray(arr), lengths_B=lengths)
  np.testing.assert_allclose(np.where(valid[..., None], ext.logits, 0),
                             np.where(valid[..., None], want, 0), atol=2e-5, rtol=2e-5)
  h = model.entropies(params, cfg, jnp.asarray(arr), lengths)
  np.testing.assert_allclose(np.where(valid, ext.H, 0), np.where(valid, h, 0), atol=2e-5)


def test_fused_projections_decode_what_the_checkpoint_weights_decode():
  """`layers.fuse_projections` (decode.py's decoding weights) changes no value: the training
  forward's logits match to fp32 rounding, and cached greedy decoding with the fused weights
  gives the bytes of the full recompute with the checkpoint's separate kernels."""
  import jax.numpy as jnp

  from bltjax.modeling import layers, model

  cfg, params = _setup(window=16)
  fused = layers.fuse_projections(params)
  blk = fused["global_transformer"]["layers_0"]
  assert set(blk["attention"]) == {"wqkv", "wo"} and set(blk["feed_forward"]) == {"w13", "w2"}
  assert "wq" in params["global_transformer"]["layers_0"]["attention"]  # input untouched
  ids = jnp.asarray([generation.encode_prompt(PROMPTS[0])], jnp.int32)
  np.testing.assert_allclose(model.forward(fused, cfg, ids), model.forward(params, cfg, ids),
                             atol=1e-6, rtol=1e-6)
  res = generate(fused, cfg, PROMPTS[:2], max_new=30)
  for prompt, r in zip(PROMPTS[:2], res, strict=True):
    ref = generation.generate_reference(params, cfg, prompt, 30)
    got = r.new_ids + ([2] if r.reason == "eos" else [])
    assert got == ref[:len(got)] and len(got) > 4
