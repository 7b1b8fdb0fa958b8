"""bltjax/modeling/kernels.py: the segmented local attention and the segment pooling equal their
dense masked forms (values and gradients) on packed rows with several documents and padding, and the
model's stacks give the same logits whichever form the plan picks."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax.config import BOS_ID, EOS_ID, OFFSET, TransformerConfig
from bltjax.modeling import kernels, model
from bltjax.modeling.layers import attend, local_mask
from tests.model_fixtures import tiny_config, tiny_params

# Tiny graphs: skip LLVM's optimisation passes (most of their compile time); numerics are equal.
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def _rand(key, *shape):
  return jax.random.normal(key, shape, jnp.float32)


def packed_rows(s: int, seed: int = 0):
  """Two rows: row 0 holds three documents, row 1 two documents and right padding."""
  rng = np.random.default_rng(seed)
  doc = np.zeros((2, s), np.int32)
  for r, cuts in enumerate(([s // 4, s // 2 + 1], [s // 3])):
    for c in cuts:
      doc[r, c:] += 1
  valid = np.ones((2, s), bool)
  valid[1, s - s // 5:] = False
  pos = np.broadcast_to(np.arange(s, dtype=np.int32), (2, s))
  ids = rng.integers(OFFSET, OFFSET + 256, (2, s)).astype(np.int32)
  return jnp.asarray(pos), jnp.asarray(doc), jnp.asarray(valid), ids


@pytest.mark.parametrize("s,window,segment,chunk", [
  (16, 5, 3, None), (16, 5, 4, 2), (37, 8, 8, None), (37, 8, 5, 3), (64, 13, 8, 2),
  (64, 64, 16, None), (48, 1, 4, None)])
def test_segmented_local_attention_equals_dense(s, window, segment, chunk):
  pos, doc, valid, _ = packed_rows(s)
  _assert_same_values_and_grads(
    lambda q, k, v: kernels.local_attend(q, k, v, pos, doc, valid, window, segment, chunk),
    lambda q, k, v: attend(q, k, v, local_mask(pos, pos, doc, doc, valid, window)),
    s, seed=s + window)


def _assert_same_values_and_grads(fast, dense, s: int, seed: int):
  """fast(q, k, v) == dense(q, k, v) on random [2, s] GQA inputs, values and gradients."""
  h, g, kd = 4, 2, 8
  ks = jax.random.split(jax.random.key(seed), 4)
  q, k, v = _rand(ks[0], 2, s, h, kd), _rand(ks[1], 2, s, g, kd), _rand(ks[2], 2, s, g, kd)
  r = _rand(ks[3], 2, s, h, kd)
  np.testing.assert_allclose(jit(fast)(q, k, v), jit(dense)(q, k, v), atol=1e-6)
  loss = lambda f: lambda *a: jnp.sum(f(*a) * r)  # noqa: E731
  g_fast = jit(jax.grad(loss(fast), argnums=(0, 1, 2)))(q, k, v)
  g_dense = jit(jax.grad(loss(dense), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g_fast, g_dense, strict=True):
    np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("s,block", [(16, 4), (37, 8), (64, 16), (50, 24), (33, 40)])
def test_blocked_causal_attention_equals_dense(s, block):
  """The global model's form: plain causal within documents, padded slots, GQA."""
  pos, doc, valid, _ = packed_rows(s)
  _assert_same_values_and_grads(
    lambda q, k, v: kernels.causal_attend(q, k, v, pos, doc, valid, block),
    lambda q, k, v: attend(q, k, v, local_mask(pos, pos, doc, doc, valid, None)),
    s, seed=s + block)


def test_blocked_causal_attention_gives_zero_without_a_visible_key():
  s = 12
  pos, doc, valid, _ = packed_rows(s)
  valid = valid.at[0, :5].set(False)  # row 0's first document has no valid key at all
  ks = jax.random.split(jax.random.key(5), 3)
  q, k, v = _rand(ks[0], 2, s, 2, 4), _rand(ks[1], 2, s, 2, 4), _rand(ks[2], 2, s, 2, 4)
  out = kernels.causal_attend(q, k, v, pos, doc, valid, 4)
  np.testing.assert_array_equal(np.asarray(out)[0, :3], 0.0)
  np.testing.assert_allclose(out, attend(q, k, v, local_mask(pos, pos, doc, doc, valid, None)),
                             atol=1e-6)


def test_other_documents_and_padded_keys_are_not_read():
  s, w = 24, 6
  pos, doc, valid, _ = packed_rows(s)
  ks = jax.random.split(jax.random.key(3), 3)
  q, k, v = _rand(ks[0], 2, s, 2, 4), _rand(ks[1], 2, s, 2, 4), _rand(ks[2], 2, s, 2, 4)
  out = kernels.local_attend(q, k, v, pos, doc, valid, w, 4, None)
  pad = ~np.asarray(valid)
  padded = kernels.local_attend(q, k, v.at[1].add(jnp.asarray(pad[1], jnp.float32)[:, None, None]),
                                pos, doc, valid, w, 4, None)
  np.testing.assert_array_equal(np.asarray(padded)[1, ~pad[1]], np.asarray(out)[1, ~pad[1]])
  # Changing document 0's values leaves document 1 of row 0 as it was.
  moved = kernels.local_attend(q, k, v.at[0, :s // 4].add(5.0), pos, doc, valid, w, 4, None)
  np.testing.assert_array_equal(np.asarray(moved)[0, s // 4:], np.asarray(out)[0, s // 4:])


def _pool_inputs(s: int, p: int, c: int):
  _, _, valid, _ = packed_rows(s)
  rng = np.random.default_rng(s)
  starts = np.sort(rng.choice(np.arange(1, s), p - 3, replace=False))
  pid = np.searchsorted(starts, np.arange(s), side="right")  # p - 2 patches used: 2 empty
  pid = jnp.asarray(np.broadcast_to(pid, (2, s)).astype(np.int32))
  ks = jax.random.split(jax.random.key(p), 4)
  h, kd = 2, 4
  return (pid, valid, _rand(ks[0], 2, p, c, h, kd), _rand(ks[1], 2, s, h, kd),
          _rand(ks[2], 2, s, h, kd), _rand(ks[3], 2, p, c, h, kd))


@pytest.mark.parametrize("s,p,c", [(16, 6, 2), (40, 12, 1), (33, 9, 3)])
def test_segment_pooling_equals_dense(s, p, c):
  pid, valid, q, k, v, r = _pool_inputs(s, p, c)

  def dense(q, k, v):
    o = attend(q.reshape(2, p * c, *q.shape[3:]), k, v, kernels.patch_mask(pid, valid, p, c))
    return o.reshape(q.shape)

  def seg(q, k, v):
    return kernels.patch_attend(q, k, v, pid, valid)

  got, want = jit(seg)(q, k, v), jit(dense)(q, k, v)
  np.testing.assert_allclose(got, want, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(got)[:, p - 2:], 0.0)  # empty patches give 0
  loss = lambda f: lambda *a: jnp.sum(f(*a) * r)
  g_seg = jit(jax.grad(loss(seg), argnums=(0, 1, 2)))(q, k, v)
  g_dense = jit(jax.grad(loss(dense), argnums=(0, 1, 2)))(q, k, v)
  for a, b in zip(g_seg, g_dense):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_plan_picks_dense_for_short_rows_and_segments_long_ones():
  st = TransformerConfig(dim=64, n_layers=1, n_heads=4, window=512)
  assert kernels.local_plan(st, 1024) == kernels.LocalPlan()
  long = kernels.local_plan(st, 8192)
  assert long.segment == 256 and long.chunk >= 1
  plain = dataclasses.replace(st, window=None)  # the global model: blocks once over budget
  assert kernels.local_plan(plain, 1024) == kernels.LocalPlan()
  assert kernels.local_plan(plain, 4098) == kernels.LocalPlan(block=456)  # 9 blocks, 4104 slots
  assert kernels.local_plan(plain, 4098, segment=None) == kernels.LocalPlan()
  assert not kernels.pool_is_segmented(4, 2 * 257, 256)
  assert kernels.pool_is_segmented(16, 2 * 4097, 8192)
  pos = jnp.zeros((1, 1024), jnp.int32)
  assert isinstance(kernels.self_attention(st, pos, pos, pos == 0), jax.Array)
  pos = jnp.zeros((1, 8192), jnp.int32)
  assert isinstance(kernels.self_attention(st, pos, pos, pos == 0), kernels.LocalPattern)
  assert kernels.self_attention(plain, pos, pos, pos == 0).block == kernels.causal_block(8192)


def _packed_ids(s: int):
  _, _, _, ids = packed_rows(s, seed=7)
  ids[:, 0] = BOS_ID
  ids[0, s // 3], ids[0, s // 3 + 1] = EOS_ID, BOS_ID
  return jnp.asarray(ids)


def test_model_forward_and_entropies_equal_in_every_layout(monkeypatch):
  """BLT logits, gradients and entropy-model entropies: segmented stacks, segment pooling and
  the global model's blocks (forced, 4 patches per block) equal the dense masks on packed rows
  longer than twice the window."""
  s, w = 48, 8
  cfg = tiny_config(window=w, max_patch_length=6)
  params = tiny_params(cfg)
  ids = _packed_ids(s)
  lengths = jnp.asarray([s, s - 7], jnp.int32)

  start = model.patch(params, cfg, ids, lengths)  # one set of patches (entropies may differ
  # in the last bit between layouts, which could move a patch start right at the threshold)
  assert int(start[0].sum()) > 4

  def run(p):
    return model.forward(p, cfg, ids, start, lengths), model.entropies(p, cfg, ids, lengths)

  def grads(p):
    ok = (jnp.arange(s)[None] < lengths[:, None])[..., None]
    return jax.grad(lambda pp: jnp.sum(jnp.where(ok, jax.nn.log_softmax(
      model.forward(pp, cfg, ids, start, lengths)), 0.0)[..., 5]))(p)

  monkeypatch.setattr(kernels, "pool_is_segmented", lambda *a, **k: True)
  plan, blocked = kernels.local_plan, []

  def plan_with_blocks(st, seq_len, *a, **k):
    if st.window is not None:
      return plan(st, seq_len, *a, **k)
    blocked.append(seq_len)
    return kernels.LocalPlan(block=4)

  monkeypatch.setattr(kernels, "local_plan", plan_with_blocks)
  seg = jit(lambda p: run(p))(params)
  g_seg = jit(lambda p: grads(p))(params)
  assert blocked and min(blocked) > 8  # the global model ran at least 3 blocks
  monkeypatch.setattr(kernels, "pool_is_segmented", lambda *a, **k: False)
  monkeypatch.setattr(kernels, "local_plan", lambda *a, **k: kernels.LocalPlan())
  dense = jit(lambda p: run(p))(params)
  g_dense = jit(lambda p: grads(p))(params)
  valid = np.arange(s)[None] < np.asarray(lengths)[:, None]
  for a, b in zip(seg, dense):
    np.testing.assert_allclose(np.asarray(a)[valid], np.asarray(b)[valid], atol=2e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_seg), jax.tree.leaves(g_dense)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_segmented_layout_is_used_by_the_model(monkeypatch):
  """Guards the test above: at S > 2W the stacks get a LocalPattern, and pooling can segment."""
  seen = []
  orig = kernels.local_attend

  def spy(*a, **k):
    seen.append(a[7] if len(a) > 7 else k.get("segment"))
    return orig(*a, **k)

  monkeypatch.setattr(kernels, "local_attend", spy)
  monkeypatch.setattr(kernels, "pool_is_segmented", lambda *a, **k: True)
  cfg = tiny_config(window=8)
  params = tiny_params(cfg)
  model.forward(params, cfg, _packed_ids(48))
  assert seen and all(q == 8 for q in seen)
