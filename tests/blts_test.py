"""BLT-S (bltjax/speculative.py): the multi-position verify pass equals single steps, and greedy
BLT-S output is byte-identical to greedy AR decoding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax import decoding as D
from bltjax import speculative as S
from tests.decoding_test import PROMPTS, _setup

Q = 6


def _prefill(cfg, params, prompt: bytes, extra: int):
  ids = D.encode_prompt(prompt)
  arr = np.zeros((1, D.bucket(len(ids))), np.int32)
  arr[0, :len(ids)] = ids
  spec = D.CacheSpec(max_patches=128, patch_cap=cfg.patcher.max_patch_length or 512,
                     ring_extra=extra)
  return D.prefill(params, cfg, jnp.asarray(arr), jnp.asarray([len(ids)], jnp.int32), spec)


def _copy(state):
  return jax.tree.map(jnp.copy, state)


@pytest.mark.parametrize("kw", [dict(window=16), dict(window=16, max_patch_length=3, k=4)])
def test_extend_then_commit_equals_single_steps(kw):
  """For every stop point a, commit(extend(state, ids), a) is the state after a + 1 `step`s:
  same logits and patch bookkeeping, and the same greedy continuation afterwards."""
  cfg, params = _setup(**kw)
  st0 = _prefill(cfg, params, PROMPTS[2][:70], Q)
  # Ids that close patches inside the window: the model's own greedy bytes, then arbitrary ones.
  ids = np.array([[int(jnp.argmax(st0.logits[0])), 101, 32, 120, 36, 200]], np.int32)
  active = jnp.ones((1,), bool)
  ext = S.extend(params, cfg, _copy(st0), jnp.asarray(ids), active)
  closes = int(ext.closed[0, -1])
  assert closes >= 1, "the window must close a patch for the test to mean anything"
  ref = _copy(st0)
  for a in range(Q):
    ref = D.step(params, cfg, ref, jnp.asarray(ids[:, a]), active)
    got = S.commit(ext, jnp.asarray([a]), active)
    for f in ("n", "n_closed", "patch_len", "next_start", "rule_start", "hist"):
      np.testing.assert_array_equal(getattr(got, f), getattr(ref, f), err_msg=f"{f} at a={a}")
    np.testing.assert_allclose(got.logits, ref.logits, atol=2e-5, rtol=2e-5, err_msg=f"a={a}")
    np.testing.assert_allclose(got.H_last, ref.H_last, atol=2e-5, err_msg=f"a={a}")
    np.testing.assert_allclose(got.lat_k, ref.lat_k, atol=2e-5, err_msg=f"a={a}")
    n_open = int(ref.patch_len[0])
    np.testing.assert_allclose(got.patch_max, ref.patch_max, atol=2e-5)
    np.testing.assert_allclose(got.patch_k[:, :n_open], ref.patch_k[:, :n_open], atol=2e-5)
    # The rejected positions leave no trace: greedy decoding continues identically.
    g1, r1 = _continue(params, cfg, got), _continue(params, cfg, _copy(ref))
    assert g1 == r1, (a, g1, r1)


def _continue(params, cfg, state, n: int = 12) -> list[int]:
  out, active = [], jnp.ones((1,), bool)
  for _ in range(n):
    t = jnp.argmax(state.logits, axis=-1).astype(jnp.int32)
    out.append(int(t[0]))
    state = D.step(params, cfg, state, t, active)
  return out


@pytest.mark.parametrize("kw,k", [
  (dict(window=16), 4),  # prompts and generations cross the local window
  (dict(window=16, max_patch_length=3, k=4), 8),
  (dict(window=32, mode="space", threshold=None), 2),
])
def test_blts_greedy_is_byte_identical_to_ar(kw, k):
  cfg, params = _setup(**kw)
  ar = D.generate(params, cfg, PROMPTS, max_new=40)
  sp = S.generate(params, cfg, PROMPTS, max_new=40, k=k)
  for x, y in zip(ar, sp, strict=True):
    assert y.new_ids == x.new_ids and y.reason == x.reason
    assert y.nfe_dec == y.cycles * (k + 1) and y.nfe_enc == y.cycles
    assert y.nfe_ent == y.cycles and y.nfe_enc_byte == y.drafted
    assert y.drafted == y.cycles * k and 0 <= y.accepted <= y.agree <= y.drafted
  n_bytes = sum(len(x.new_ids) + (x.reason == "eos") for x in ar)
  cycles = sum(y.cycles for y in sp)
  # Speculation must actually commit several bytes per pass, and must also be rejected.
  assert cycles < n_bytes and 0 < sum(y.accepted for y in sp) < sum(y.drafted for y in sp)
  assert sum(y.accepted for y in sp) + cycles >= n_bytes


def test_blts_stops_and_budgets_match_ar():
  # Same batch shape and max_new as above, so the compiled loops are reused.
  cfg, params = _setup(window=16)
  full = D.generate(params, cfg, PROMPTS, max_new=40)[0]
  stop = full.data[5:7]
  kw = dict(max_new=40, stops=(stop,), budgets=[40, 3, 7, 40])
  ar = D.generate(params, cfg, [PROMPTS[0]] * 2 + PROMPTS[2:], **kw)
  sp = S.generate(params, cfg, [PROMPTS[0]] * 2 + PROMPTS[2:], k=4, **kw)
  assert [(y.new_ids, y.reason) for y in sp] == [(x.new_ids, x.reason) for x in ar]
  assert ar[0].reason == "stop" and ar[1].reason == "length" and len(ar[1].new_ids) == 3
  with pytest.raises(ValueError, match="k: the draft window"):
    S.generate(params, cfg, [b"x"], max_new=2, k=0)


def test_spec_generation_rates():
  g = S.SpecGeneration([5, 6], "length", 10, 2, 1, cycles=2, drafted=8, accepted=2, agree=5)
  assert g.acceptance == 0.25 and g.agreement == 0.625
  assert dataclasses.asdict(g)["cycles"] == 2


def test_blts_stops_at_the_global_cache_like_ar():
  """A global cache of 16 patch slots fills mid-generation: same ids, same "context" stop."""
  cfg, params = _setup(window=16)
  ar = D.generate(params, cfg, PROMPTS[:2], max_new=40, max_patches=16)
  sp = S.generate(params, cfg, PROMPTS[:2], max_new=40, max_patches=16, k=4)
  assert "context" in [x.reason for x in ar]
  assert [(y.new_ids, y.reason) for y in sp] == [(x.new_ids, x.reason) for x in ar]
