"""Tests for bltjax.modeling.hashing (arXiv 2412.09871 §3.2.1): hand-checked examples, JAX vs NumPy,
NumPy vs PyTorch."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax.modeling import hashing

SIZES = (3, 4, 5, 6, 7, 8)
VOCABS = (1021, 50002, 500002)
RELEASE_V = 500002

# Reproduced with PyTorch's int64 hash: "abc" without BOS, function 0, V = 500002, per n.
ABC_IDS = [101, 102, 103]
ABC_F0 = {
  3: [324997, 462189, 402282],
  4: [340779, 102969, 80858],
  5: [101223, 65201, 450594],
  6: [161491, 429067, 59396],
  7: [217785, 316895, 215084],
  8: [138997, 125661, 493652],
}
ABC_F1_N3 = [83339, 456965, 65712]
# Signed int64 hashes of the n=3 windows of "abc" (the table's middle column).
ABC_H_N3 = [8766281045452246869, -8680462913257303991, -7680462898257303834]

# Reproduced with PyTorch's int64 hash: "Hello" with BOS, function 0, V = 500002.
HELLO_IDS = [1, 76, 105, 112, 112, 115]
HELLO_F0 = {
  3: [443987, 124875, 393970, 386145, 358223, 190185],
  4: [437197, 433869, 117936, 254402, 246577, 30240],
  5: [123201, 168913, 27892, 170862, 307328, 265602],
  6: [166353, 160907, 92310, 405250, 48218, 280239],
  7: [34117, 338221, 15158, 281878, 94816, 340137],
  8: [172383, 205585, 456240, 129346, 299568, 322649],
}


def _both(ids, **kw):
  """(JAX, NumPy) results as NumPy arrays."""
  return np.asarray(hashing.hash_ngram_ids(jnp.asarray(ids, jnp.int32), **kw)), (
    hashing.hash_ngram_ids_np(np.asarray(ids), **kw)
  )


def _random_ids(seed: int, shape: tuple[int, int], high: int = 261) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, high, size=shape, dtype=np.int32)


def _stress_ids(seed: int, shape: tuple[int, int]) -> np.ndarray:
  """Ids near 2**16 - 1 (the largest allowed) mixed with zeros: maximal partial products."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(2**16 - 64, 2**16, size=shape, dtype=np.int32)
  ids[rng.random(shape) < 0.1] = 0
  ids[:, -4:] = 2**16 - 1
  return ids


def test_primes():
  assert hashing.PRIMES == (
    1000000007,
    5915587277,
    1500450271,
    3267000013,
    5754853343,
    4093082899,
    9576890767,
    3628273133,
    2860486313,
    5463458053,
    3367900313,
  )


@pytest.mark.parametrize("impl", ["jax", "np"])
def test_worked_example_abc(impl):
  kw = dict(group_sizes=SIZES, nb_functions=2, vocab=RELEASE_V)
  got_jax, got_np = _both([ABC_IDS], **kw)
  got = got_jax if impl == "jax" else got_np
  assert got.shape == (1, 3, 12) and got.dtype == np.int32
  for j, n in enumerate(SIZES):
    np.testing.assert_array_equal(got[0, :, j], ABC_F0[n], err_msg=f"n={n}")
  # Function 1, n = 3 sits at table index 1 * len(SIZES) + 0.
  np.testing.assert_array_equal(got[0, :, len(SIZES)], ABC_F1_N3)


def test_worked_example_abc_signed_hash():
  """The signed int64 hashes of the example, and floor-mod of it, by plain Python ints."""
  p = hashing.PRIMES[0]
  padded = [0, 0] + ABC_IDS
  for t in range(3):
    h = sum(w * pow(p, i) for i, w in enumerate(padded[t : t + 3])) % 2**64
    h = h - 2**64 if h >= 2**63 else h
    assert h == ABC_H_N3[t]
    assert h % RELEASE_V == ABC_F0[3][t]  # Python % is floor-mod, like PyTorch.


@pytest.mark.parametrize("impl", ["jax", "np"])
def test_worked_example_hello(impl):
  kw = dict(group_sizes=SIZES, nb_functions=1, vocab=RELEASE_V)
  got_jax, got_np = _both([HELLO_IDS], **kw)
  got = got_jax if impl == "jax" else got_np
  assert got.shape == (1, 6, 6)
  for j, n in enumerate(SIZES):
    np.testing.assert_array_equal(got[0, :, j], HELLO_F0[n], err_msg=f"n={n}")


@pytest.mark.parametrize("vocab", VOCABS)
def test_jax_matches_numpy_random(vocab):
  kw = dict(group_sizes=SIZES, nb_functions=3, vocab=vocab)
  got_jax, got_np = _both(_random_ids(vocab, (4, 64)), **kw)
  assert got_jax.shape == (4, 64, 18)
  np.testing.assert_array_equal(got_jax, got_np)
  assert got_jax.min() >= 0 and got_jax.max() < vocab


@pytest.mark.parametrize("vocab", VOCABS)
def test_jax_matches_numpy_large_ids(vocab):
  kw = dict(group_sizes=SIZES, nb_functions=3, vocab=vocab)
  got_jax, got_np = _both(_stress_ids(vocab + 1, (3, 48)), **kw)
  np.testing.assert_array_equal(got_jax, got_np)


def test_jax_matches_numpy_under_jit():
  kw = dict(group_sizes=SIZES, nb_functions=3, vocab=RELEASE_V)
  fn = jax.jit(functools.partial(hashing.hash_ngram_ids, **kw))
  ids = np.concatenate([_random_ids(7, (2, 40)), _stress_ids(8, (2, 40))], axis=0)
  got = np.asarray(fn(jnp.asarray(ids)))
  np.testing.assert_array_equal(got, hashing.hash_ngram_ids_np(ids, **kw))
  assert got.dtype == np.int32


def test_no_64bit_types():
  """The emulation must not need jax_enable_x64: no 64-bit values anywhere in the program."""
  assert not jax.config.jax_enable_x64
  kw = dict(group_sizes=SIZES, nb_functions=3, vocab=RELEASE_V)
  fn = functools.partial(hashing.hash_ngram_ids, **kw)
  hlo = jax.jit(fn).lower(jnp.zeros((2, 16), jnp.int32)).as_text()
  assert "tensor<" in hlo
  assert not re.search(r"tensor<[^>]*(i64|f64)>", hlo)


@pytest.mark.parametrize("vocab", [1, 2, 7, 2**16, 2**16 + 1, 2**30 + 3, 2**31 - 1, 2**31])
def test_jax_matches_numpy_vocab_range(vocab):
  """Any vocab up to 2**31: the Horner chunk width shrinks to 1 bit at the top end."""
  kw = dict(group_sizes=(1, 3, 8), nb_functions=11, vocab=vocab)
  ids = np.concatenate([_random_ids(3, (1, 24)), _stress_ids(4, (1, 24))], axis=0)
  got_jax, got_np = _both(ids, **kw)
  np.testing.assert_array_equal(got_jax, got_np)


def test_prime_cycling_and_table_order():
  """Function f uses PRIMES[f % 11]: function 11 repeats function 0."""
  kw = dict(group_sizes=(3, 5), vocab=50002)
  ids = _random_ids(11, (2, 16))
  got = np.asarray(hashing.hash_ngram_ids(jnp.asarray(ids), nb_functions=12, **kw))
  assert got.shape == (2, 16, 24)
  np.testing.assert_array_equal(got[..., 22:24], got[..., 0:2])
  one = np.asarray(hashing.hash_ngram_ids(jnp.asarray(ids), nb_functions=1, **kw))
  np.testing.assert_array_equal(got[..., 0:2], one)


def test_short_sequences():
  """Sequences shorter than the window: all of it is left padding."""
  kw = dict(group_sizes=SIZES, nb_functions=1, vocab=RELEASE_V)
  got_jax, got_np = _both([[HELLO_IDS[0]], [HELLO_IDS[1]]], **kw)
  np.testing.assert_array_equal(got_jax, got_np)
  got_jax, _ = _both([HELLO_IDS[:2]], **kw)
  for j, n in enumerate(SIZES):
    np.testing.assert_array_equal(got_jax[0, :, j], HELLO_F0[n][:2])


def test_invalid_vocab():
  with pytest.raises(ValueError):
    hashing.hash_ngram_ids(
      jnp.zeros((1, 4), jnp.int32), group_sizes=(3,), nb_functions=1, vocab=2**31 + 1
    )


@pytest.mark.oracle
def test_numpy_matches_pytorch():
  # Plain imports, not importorskip: this oracle must not be skipped silently.
  import torch
  from transformers.models.blt import modeling_blt

  ids = np.concatenate([_random_ids(0, (3, 50)), _stress_ids(1, (1, 50))], axis=0)
  for vocab in VOCABS:
    got = hashing.hash_ngram_ids_np(ids, group_sizes=SIZES, nb_functions=3, vocab=vocab)
    for f in range(3):
      for j, n in enumerate(SIZES):
        want = modeling_blt.byte_group_hash_function(
          torch.from_numpy(ids.astype(np.int64)),
          group_size=n,
          prime=hashing.PRIMES[f],
          max_hash=vocab,
        ).numpy()
        np.testing.assert_array_equal(
          got[..., f * len(SIZES) + j], want, err_msg=f"vocab={vocab} f={f} n={n}"
        )


def test_ngram_valid_mask():
  positions = jnp.array([[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]], jnp.int32)
  got = np.asarray(hashing.ngram_valid_mask(positions, group_sizes=(1, 3, 4), nb_functions=2))
  assert got.shape == (2, 5, 6) and got.dtype == np.bool_
  want_n1 = [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
  want_n3 = [[0, 0, 1, 1, 1], [0, 0, 1, 0, 0]]
  want_n4 = [[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]]
  for f in range(2):
    np.testing.assert_array_equal(got[..., 3 * f + 0], np.array(want_n1, bool))
    np.testing.assert_array_equal(got[..., 3 * f + 1], np.array(want_n3, bool))
    np.testing.assert_array_equal(got[..., 3 * f + 2], np.array(want_n4, bool))


def test_hash_rows_and_their_scatter_equal_numpy_indexing():
  """Both lookups (`hash_rows`, batched; `hash_rows_per_table`, the training step's) select table
  t's rows ids[..., t] as numpy indexing does; their gradients and `add_hash_rows_per_table`
  (the training step's scatter) add them back alike, repeated ids included."""
  rng = np.random.default_rng(0)
  table = rng.standard_normal((3, 11, 4)).astype(np.float32)
  ids = rng.integers(0, 11, size=(2, 5, 3)).astype(np.int32)
  ids[0, :, 1] = 7  # one row read five times
  want = np.stack([table[t][ids[..., t]] for t in range(3)], axis=2)
  g = rng.standard_normal(want.shape).astype(np.float32)
  want_grad = np.zeros_like(table)
  for t in range(3):
    np.add.at(want_grad[t], ids[..., t], g[:, :, t])
  for fn in (hashing.hash_rows, hashing.hash_rows_per_table):
    np.testing.assert_array_equal(jax.jit(fn)(table, ids), want)
    grad = jax.grad(lambda tb, fn=fn: jnp.sum(fn(tb, ids) * g))(jnp.asarray(table))
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, atol=1e-6)
  acc = jax.jit(hashing.add_hash_rows_per_table)(jnp.zeros_like(table), ids, jnp.asarray(g))
  np.testing.assert_allclose(acc, want_grad, rtol=1e-6, atol=1e-6)
