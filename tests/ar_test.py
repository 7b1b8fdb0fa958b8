"""Cached decoding equals full recompute; sampling is batch-independent."""

import dataclasses

import numpy as np
import pytest

from bltjax import decoding as D
from tests.model_fixtures import median_threshold, tiny_config, tiny_params

PROMPTS = [b"Hello world", b"a", b"The quick brown fox jumps over the lazy dog. " * 3,
           bytes(range(200, 256)) + b"\x00\xff"]


def _setup(**kw):
  cfg = tiny_config(**kw)
  params = tiny_params(cfg)
  if cfg.patcher.mode == "entropy":
    th = median_threshold(params, cfg)
    cfg = cfg.replace(patcher=dataclasses.replace(cfg.patcher, threshold=th))
  return cfg, params


def _check_against_reference(cfg, params, prompts, max_new, width=256):
  res = D.generate(params, cfg, prompts, max_new=max_new)
  for prompt, r in zip(prompts, res, strict=True):
    ref = D.generate_reference(params, cfg, prompt, max_new, width=width)
    got = r.new_ids + ([2] if r.reason == "eos" else [])
    assert got == ref[:len(got)], (prompt, got, ref)
    assert len(got) == len(ref) or r.reason != "length"
    assert r.nfe_dec == len(got)
    assert r.nfe_ent == r.nfe_enc_byte == len(got) - 1  # no step after the last byte
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
  assert sum(r.nfe_enc for r in res) > 10


def test_long_prompt_crosses_window():
  cfg, params = _setup(window=16)
  prompts = [bytes(np.random.default_rng(3).integers(32, 127, 300).astype(np.uint8))]
  _check_against_reference(cfg, params, prompts, 24, width=512)


def test_seeded_sampling_independent_of_batch():
  cfg, params = _setup(window=16)
  sc = D.SamplingConfig(temperature=1.0, top_k=50, top_p=0.9)
  alone = D.generate(params, cfg, [PROMPTS[0]], max_new=30, sc=sc, seeds=[7])[0]
  batch = D.generate(params, cfg, [PROMPTS[2], PROMPTS[0], PROMPTS[1]], max_new=30, sc=sc,
                     seeds=[1, 7, 3])
  assert batch[1].new_ids == alone.new_ids
  other = D.generate(params, cfg, [PROMPTS[0]], max_new=30, sc=sc, seeds=[8])[0]
  assert other.new_ids != alone.new_ids  # the seed matters


def test_stop_strings_and_budget():
  cfg, params = _setup(window=16)
  full = D.generate(params, cfg, [PROMPTS[0]], max_new=30)[0]
  if full.reason == "eos" or len(full.data) < 6:
    pytest.fail("fixture should generate at least 6 bytes without EOS")
  stop = full.data[3:5]
  cut = D.generate(params, cfg, [PROMPTS[0]], max_new=30, stops=(stop,))[0]
  assert cut.reason == "stop"
  assert full.data.startswith(cut.data) and stop not in cut.data
  short = D.generate(params, cfg, [PROMPTS[0], PROMPTS[1]], max_new=30, budgets=[3, 30])
  assert short[0].reason == "length" and len(short[0].new_ids) == 3
  assert short[0].new_ids == full.new_ids[:3]


def test_static_patching_is_refused():
  cfg = tiny_config(mode="static", threshold=None)
  with pytest.raises(ValueError, match="patcher.mode"):
    D.generate(None, cfg, [b"x"], max_new=2)  # refused before any weights are touched


def test_stream_matches_batch():
  cfg, params = _setup(window=16)
  batch = D.generate(params, cfg, [PROMPTS[0]], max_new=30)[0]
  streamed = b"".join(D.stream(params, cfg, PROMPTS[0], max_new=30))
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
  got = D.generate(bltd, cfg2, PROMPTS, max_new=40)
  want = D.generate(params, cfg, PROMPTS, max_new=40)
  assert [r.new_ids for r in got] == [r.new_ids for r in want]
  assert [r.nfe_enc for r in got] == [r.nfe_enc for r in want]
  assert sum(len(r.new_ids) for r in got) > 40
  text = PROMPTS[2]
  s_d = score.score_bytes(bltd, cfg2, text, window=64)
  s_b = score.score_bytes(params, cfg, text, window=64)
  assert s_d["patches"] == s_b["patches"]
  np.testing.assert_allclose(s_d["nll_nats"], s_b["nll_nats"], rtol=1e-6)
