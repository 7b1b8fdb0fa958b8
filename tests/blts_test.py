"""BLT-S (bltjax/decoding/blts.py): the engine's multi-position forward equals single steps, and
greedy BLT-S output is byte-identical to greedy AR decoding."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax.decoding import engine, generation
from bltjax.decoding.generation import Options
from tests.model_fixtures import PROMPTS
from tests.model_fixtures import blt_setup as _setup

Q = 6


def _prefill(cfg, params, prompt: bytes, extra: int):
  ids = generation.encode_prompt(prompt)
  arr = np.zeros((1, generation.bucket(len(ids))), np.int32)
  arr[0, :len(ids)] = ids
  spec = engine.CacheSpec(max_patches=128, max_len=256,
                          patch_cap=cfg.patcher.max_patch_length or 512, max_q=extra)
  return engine.prefill(params, cfg, jnp.asarray(arr), jnp.asarray([len(ids)], jnp.int32), spec)


def generate(params, cfg, prompts, k=None, **kw):
  method = "ar" if k is None else "blts"
  return generation.generate(params, cfg, prompts, method=method,
                             options=Options(draft_k=8 if k is None else k), **kw)


def _copy(state):
  return jax.tree.map(jnp.copy, state)


@pytest.mark.parametrize("kw", [dict(window=16), dict(window=16, max_patch_length=3, k=4)])
def test_extend_then_commit_equals_single_steps(kw):
  """For every stop point a, commit(forward(state, ids), a) is the state after a + 1 steps:
  same logits and patch bookkeeping, and the same greedy continuation afterwards."""
  cfg, params = _setup(**kw)
  st0 = _prefill(cfg, params, PROMPTS[2][:70], Q)
  # Ids that close patches inside the window: the model's own greedy bytes, then arbitrary ones.
  ids = np.array([[int(jnp.argmax(st0.logits[0])), 101, 32, 120, 36, 200]], np.int32)
  active = jnp.ones((1,), bool)
  ext = engine.forward(params, cfg, _copy(st0), jnp.asarray(ids), jnp.ones((1, Q), bool))
  closes = int(jnp.sum(ext.start[0]))
  assert closes >= 1, "the window must close a patch for the test to mean anything"
  ref = _copy(st0)
  for a in range(Q):
    ref = engine.step(params, cfg, ref, jnp.asarray(ids[:, a]), active)
    got = engine.commit(ext, jnp.asarray([a]), active)
    for f in ("n", "n_closed", "patch_len", "next_start", "rule_start", "hist"):
      np.testing.assert_array_equal(getattr(got, f), getattr(ref, f), err_msg=f"{f} at a={a}")
    np.testing.assert_allclose(got.logits, ref.logits, atol=2e-5, rtol=2e-5, err_msg=f"a={a}")
    np.testing.assert_allclose(got.H_last, ref.H_last, atol=2e-5, err_msg=f"a={a}")
    np.testing.assert_allclose(got.lat_k, ref.lat_k, atol=2e-5, err_msg=f"a={a}")
    n_open = int(ref.patch_len[0])
    np.testing.assert_allclose(got.patch_max, ref.patch_max, atol=2e-5)
    got_k, ref_k = engine.flush_patch(got)[0], engine.flush_patch(ref)[0]  # pending written
    np.testing.assert_allclose(got_k[:, :n_open], ref_k[:, :n_open], atol=2e-5)
    # The rejected positions leave no trace: greedy decoding continues identically.
    g1, r1 = _continue(params, cfg, got), _continue(params, cfg, _copy(ref))
    assert g1 == r1, (a, g1, r1)


def _continue(params, cfg, state, n: int = 12) -> list[int]:
  out, active = [], jnp.ones((1,), bool)
  for _ in range(n):
    t = jnp.argmax(state.logits, axis=-1).astype(jnp.int32)
    out.append(int(t[0]))
    state = engine.step(params, cfg, state, t, active)
  return out


@pytest.mark.parametrize("kw,k", [
  (dict(window=16), 4),  # prompts and generations cross the local window
  (dict(window=16, max_patch_length=3, k=4), 8),
  (dict(window=32, mode="space", threshold=None), 2),
])
def test_blts_greedy_is_byte_identical_to_ar(kw, k):
  cfg, params = _setup(**kw)
  ref = generate(params, cfg, PROMPTS, max_new=40)
  sp = generate(params, cfg, PROMPTS, max_new=40, k=k)
  for x, y in zip(ref, sp, strict=True):
    assert y.new_ids == x.new_ids and y.reason == x.reason
    _check_counters(y, k, cfg)
  ar = ref
  n_bytes = sum(len(x.new_ids) + (x.reason == "eos") for x in ar)
  cycles = sum(y.cycles for y in sp)
  # Speculation must actually commit several bytes per pass, and must also be rejected.
  assert cycles < n_bytes and 0 < sum(y.accepted for y in sp) < sum(y.drafted for y in sp)
  assert sum(y.accepted for y in sp) + cycles >= n_bytes


def test_blts_stops_and_budgets_match_ar():
  # Same batch shape and max_new as above, so the compiled loops are reused.
  cfg, params = _setup(window=16)
  full = generate(params, cfg, PROMPTS, max_new=40)[0]
  stop = full.data[5:7]
  kw = dict(max_new=40, stops=(stop,), budgets=[40, 3, 7, 40])
  ar = generate(params, cfg, [PROMPTS[0]] * 2 + PROMPTS[2:], **kw)
  sp = generate(params, cfg, [PROMPTS[0]] * 2 + PROMPTS[2:], k=4, **kw)
  assert [(y.new_ids, y.reason) for y in sp] == [(x.new_ids, x.reason) for x in ar]
  assert ar[0].reason == "stop" and ar[1].reason == "length" and len(ar[1].new_ids) == 3
  for y in sp:
    _check_counters(y, 4, cfg)
  # Drafting stops where the generation ends: no draft past the budget or the stop string.
  assert sp[1].drafted + sp[1].cycles <= 3 + 4
  with pytest.raises(ValueError, match="the draft window"):
    generate(params, cfg, [b"x"], max_new=2, k=0)


def test_spec_generation_rates():
  g = generation.Generation([5, 6], "length", 10, 2, 1, cycles=2, drafted=8, accepted=2, agree=5)
  assert g.acceptance == 0.25 and g.agreement == 0.625
  assert dataclasses.asdict(g)["cycles"] == 2


def test_blts_stops_at_the_global_cache_like_ar():
  """A global cache of 16 patch slots fills mid-generation: same ids, same "context" stop."""
  cfg, params = _setup(window=16)
  ar = generate(params, cfg, PROMPTS[:2], max_new=40, max_patches=16)
  sp = generate(params, cfg, PROMPTS[:2], max_new=40, max_patches=16, k=4)
  assert "context" in [x.reason for x in ar]
  assert [(y.new_ids, y.reason) for y in sp] == [(x.new_ids, x.reason) for x in ar]


def _check_counters(y, k, cfg):
  """Paper counters (decoder NFE = drafts + 1 per verification, encoder+global NFE = 1) and the
  passes that ran: one draft pass per drafted byte (encoder byte layer and decoder), one forward
  (every stack) per verification."""
  assert y.nfe_dec == y.drafted + y.cycles and y.nfe_enc_global == y.cycles
  ent = y.cycles if cfg.patcher.mode == "entropy" else 0
  assert y.passes == {"decoder": y.drafted + y.cycles, "encoder": y.drafted + y.cycles,
                      "global": y.cycles, "entropy": ent}
  assert y.drafted <= y.cycles * k and 0 <= y.accepted <= y.agree <= y.drafted


def _prompts(n: int, seed: int) -> list[bytes]:
  rng = np.random.default_rng(seed)
  words = [b"the", b"cat", b"sat", b"on", b"a", b"mat", b"and", b"dog", b"ran", b"\n"]
  return [b" ".join(words[i] for i in rng.integers(0, len(words), rng.integers(1, 12)))
          for _ in range(n)]


@pytest.mark.parametrize("k", [1, 2, 4, 8, 16])
def test_blts_equals_ar_on_many_prompts(k):
  """k in {1, 2, 4, 8, 16} on 24 prompts; the model ends some generations with EOS inside a
  draft window, where drafting must stop (no draft byte after the EOS is run)."""
  cfg, params = _setup(window=16)
  prompts = _prompts(24, k) + PROMPTS
  ref = generate(params, cfg, prompts, max_new=24)
  sp = generate(params, cfg, prompts, max_new=24, k=k)
  for x, y in zip(ref, sp, strict=True):
    assert (y.new_ids, y.reason) == (x.new_ids, x.reason)
    _check_counters(y, k, cfg)
  assert any(x.reason == "eos" and len(x.new_ids) >= 1 for x in ref), "no EOS to test"
