"""Hash n-gram ids for the BLT local encoder (arXiv 2412.09871 §3.2.1; docs/architecture.md).

For every hash function `f` and n-gram size `n`, the id sequence is left-padded with `n - 1` zeros
(BOE) and each position `t` hashes its window `w = (x[t-n+1], ..., x[t])`, oldest to newest:

  h = sum_i w[i] * prime_f**i      (int64, two's-complement wrap-around)
  bucket = h mod V                 (floor modulo of the *signed* value, PyTorch `%`, in [0, V))

The released checkpoints were trained with exactly this PyTorch int64 arithmetic, so the buckets
must be bit-exact. JAX runs with 32-bit integers by default and bltjax does not turn on
`jax_enable_x64`, so `hash_ngram_ids` emulates the 64-bit arithmetic with pairs of uint32 limbs
`(hi, lo)`. `hash_ngram_ids_np` is the plain uint64 NumPy reference it is tested against.

Tables are ordered function-major: `table_index = f * len(group_sizes) + j`, and function `f`
uses `PRIMES[f % 11]`, as in the HF port. `hash_rows` looks the ids up in the [T, V, D] tables;
`add_hash_rows_per_table` scatters a gradient back (the training step's `optim.RowGradient`).
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

PRIMES: tuple[int, ...] = (
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

_MASK16 = 0xFFFF
_MOD64 = 1 << 64
_MAX_VOCAB = 1 << 31


def _check_args(group_sizes: Sequence[int], nb_functions: int, vocab: int | None) -> None:
  if not group_sizes or any(int(n) < 1 for n in group_sizes):
    raise ValueError(f"group_sizes must be a non-empty list of sizes >= 1, got {group_sizes}")
  if nb_functions < 1:
    raise ValueError(f"nb_functions must be >= 1, got {nb_functions}")
  if vocab is not None and not 1 <= vocab <= _MAX_VOCAB:
    # The unsigned reduction keeps `r * 2**k + chunk < 2**32` with r < V, which needs V <= 2**31.
    raise ValueError(f"vocab must be in [1, 2**31], got {vocab}")


def _table_layout(group_sizes: Sequence[int], nb_functions: int) -> list[tuple[int, int]]:
  """(prime, n) for each table, in function-major order."""
  return [(PRIMES[f % len(PRIMES)], int(n)) for f in range(nb_functions) for n in group_sizes]


def _shift_right(x_BxSx1: jax.Array, d: int) -> jax.Array:
  """x[..., t - d, :] with zeros (BOE) for t < d: the left padding of the hash windows."""
  if d == 0:
    return x_BxSx1
  s = x_BxSx1.shape[-2]
  pad = [(0, 0)] * (x_BxSx1.ndim - 2) + [(min(d, s), 0), (0, 0)]
  return jnp.pad(x_BxSx1[..., : max(s - d, 0), :], pad)


def _mul_u64_by_u16(w: jax.Array, p: np.ndarray) -> tuple[jax.Array, jax.Array]:
  """(w * p) mod 2**64 as (hi, lo) uint32 limbs, for uint32 `w < 2**16` and host uint64 `p`.

  `p = p_hi * 2**32 + a1 * 2**16 + a0`. The partial products `w * a0` and `w * a1` are < 2**32, so
  they are exact in uint32; `w * p_hi` only feeds the high word, where wrapping mod 2**32 is
  exactly what the 64-bit wrap-around needs.
  """
  p_hi = (p >> np.uint64(32)).astype(np.uint32)
  a1 = ((p >> np.uint64(16)) & np.uint64(_MASK16)).astype(np.uint32)
  a0 = (p & np.uint64(_MASK16)).astype(np.uint32)
  p0 = w * a0
  p1 = w * a1
  # w * (a1 * 2**16 + a0) = p0 + (p1 mod 2**16) * 2**16 + (p1 >> 16) * 2**32.
  lo = p0 + (p1 << 16)
  carry = (lo < p0).astype(jnp.uint32)
  hi = w * p_hi + (p1 >> 16) + carry
  return hi, lo


def _add_u64(
  a_hi: jax.Array, a_lo: jax.Array, b_hi: jax.Array, b_lo: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """(a + b) mod 2**64 on (hi, lo) uint32 limbs."""
  lo = a_lo + b_lo
  carry = (lo < b_lo).astype(jnp.uint32)
  return a_hi + b_hi + carry, lo


def _bits_u64(hi: jax.Array, lo: jax.Array, start: int, width: int) -> jax.Array:
  """Bits [start, start + width) of the 64-bit value (hi, lo), as uint32 (width <= 16)."""
  mask = np.uint32((1 << width) - 1)
  if start >= 32:
    return (hi >> np.uint32(start - 32)) & mask
  if start + width <= 32:
    return (lo >> np.uint32(start)) & mask
  # The chunk straddles the word boundary.
  return ((lo >> np.uint32(start)) | (hi << np.uint32(32 - start))) & mask


def _floor_mod_signed_u64(hi: jax.Array, lo: jax.Array, vocab: int) -> jax.Array:
  """Floor modulo of the signed int64 (hi, lo) by `vocab`, as uint32 in [0, vocab)."""
  # Unsigned h mod V by Horner over k-bit chunks, most significant first. With r < V and
  # k = 32 - ceil(log2 V), `r * 2**k + chunk <= V * 2**k - 1 < 2**32`, so nothing overflows
  # uint32 for any V <= 2**31 (k = 13 for V = 500002; capped at 16 for small V).
  k = min(16, 32 - (vocab - 1).bit_length())
  v = np.uint32(vocab)
  r = jnp.zeros_like(lo)
  pos = 64
  while pos > 0:
    width = min(k, pos)
    pos -= width
    r = ((r << np.uint32(width)) | _bits_u64(hi, lo, pos, width)) % v
  # Sign bit set: the signed value is h - 2**64, so the floor-mod bucket is (u - 2**64 mod V) mod V.
  # Written as a select so that no intermediate leaves [0, 2**32).
  c64 = _MOD64 % vocab
  neg = (hi >> np.uint32(31)) == 1
  wrapped = jnp.where(r >= np.uint32(c64), r - np.uint32(c64), r + np.uint32(vocab - c64))
  return jnp.where(neg, wrapped, r)


def hash_ngram_ids(
  ids_BxS: jax.Array, *, group_sizes: tuple[int, ...], nb_functions: int, vocab: int
) -> jax.Array:
  """Hash n-gram bucket ids, bit-exact with the PyTorch int64 reference, without x64.

  Jitted internally with the keyword arguments static, and safe to call under an outer `jax.jit`.
  Works on any leading dims; the window runs along the last axis.

  Args:
    ids_BxS: int offset token ids, `0 <= id < 2**16` (the caller replaces pad with 0 / BOE).
    group_sizes: n-gram sizes, e.g. (3, 4, 5, 6, 7, 8).
    nb_functions: number of hash functions; function `f` uses `PRIMES[f % 11]`.
    vocab: number of buckets per table, `1 <= vocab <= 2**31`.

  Returns:
    hash_BxSxT: int32 buckets in [0, vocab), T = nb_functions * len(group_sizes), table index
    `f * len(group_sizes) + j`.
  """
  group_sizes = tuple(int(n) for n in group_sizes)
  _check_args(group_sizes, nb_functions, vocab)
  return _hash_ngram_ids(
    jnp.asarray(ids_BxS), group_sizes=group_sizes, nb_functions=int(nb_functions), vocab=int(vocab)
  )


@functools.partial(jax.jit, static_argnames=("group_sizes", "nb_functions", "vocab"))
def _hash_ngram_ids(
  ids_BxS: jax.Array, *, group_sizes: tuple[int, ...], nb_functions: int, vocab: int
) -> jax.Array:
  """Jitted body of `hash_ngram_ids` (one fused XLA computation instead of ~1000 eager ops)."""
  x_BxSx1 = ids_BxS.astype(jnp.uint32)[..., None]
  layout = _table_layout(group_sizes, nb_functions)
  max_n = max(n for _, n in layout)
  # All T tables are computed at once along a trailing axis, so the graph (and compile time) does
  # not grow with T. Window element i of an n-gram is x[t - (n - 1 - i)]: lag d = n - 1 - i gets
  # prime**(n - 1 - d) mod 2**64 (exact host arithmetic on Python ints), and 0 when d >= n.
  bcast = (1,) * (x_BxSx1.ndim - 1) + (len(layout),)
  hi = lo = jnp.zeros_like(x_BxSx1)
  for d in range(max_n):
    pow_T = np.array(
      [pow(prime, n - 1 - d, _MOD64) if d < n else 0 for prime, n in layout], dtype=np.uint64
    )
    t_hi, t_lo = _mul_u64_by_u16(_shift_right(x_BxSx1, d), pow_T.reshape(bcast))
    hi, lo = _add_u64(hi, lo, t_hi, t_lo)
  return _floor_mod_signed_u64(hi, lo, vocab).astype(jnp.int32)


def hash_ngram_ids_np(
  ids: np.ndarray, *, group_sizes: Sequence[int], nb_functions: int, vocab: int
) -> np.ndarray:
  """NumPy reference for `hash_ngram_ids`: uint64 wrap-around, signed view, `np.mod`.

  Args:
    ids: int array [..., S] of offset token ids (non-negative).
    group_sizes: n-gram sizes.
    nb_functions: number of hash functions.
    vocab: number of buckets per table.

  Returns:
    int32 array [..., S, T] in the same table order as `hash_ngram_ids`.
  """
  _check_args(group_sizes, nb_functions, None)
  x = np.asarray(ids).astype(np.int64).astype(np.uint64)
  s = x.shape[-1]
  out = []
  for prime, n in _table_layout(group_sizes, nb_functions):
    pad = [(0, 0)] * (x.ndim - 1) + [(n - 1, 0)]
    padded = np.pad(x, pad)
    h = np.zeros_like(x)
    for i in range(n):
      # Arrays of uint64 wrap silently modulo 2**64, which is the int64 two's-complement result.
      h = h + padded[..., i : i + s] * np.uint64(pow(prime, i, _MOD64))
    out.append(np.mod(h.view(np.int64), np.int64(vocab)))
  return np.stack(out, axis=-1).astype(np.int32)


def ngram_valid_mask(
  positions_BxS: jax.Array, *, group_sizes: tuple[int, ...], nb_functions: int
) -> jax.Array:
  """Which n-gram windows are free of BOE padding, for `hash_short_ngrams="omit"` (§2.4).

  Args:
    positions_BxS: int position of each id within its sequence (0 for the first id).
    group_sizes: n-gram sizes.
    nb_functions: number of hash functions.

  Returns:
    valid_BxSxT: bool, True where `position >= n - 1`, in the `hash_ngram_ids` table order.
  """
  _check_args(group_sizes, nb_functions, None)
  pos_BxS = jnp.asarray(positions_BxS)
  n_T = np.array([n for _, n in _table_layout(group_sizes, nb_functions)], dtype=np.int32)
  n_T = n_T.reshape((1,) * pos_BxS.ndim + (-1,))
  return pos_BxS[..., None] >= n_T - 1


# The model's lookup: all tables in one batched gather (`vmap` over the table axis). Indexing
# `table[t]` makes XLA:TPU copy the slice (vocab 500002 is not a multiple of the 8-row tile):
# with slices one decoding step of BLT-1B on one v5e chip copied the whole bf16 table (5.7 GiB
# of temporaries, 12.3 GB accessed; compiled for TPU v5e by XLA, benchmarks/hash_lookup_tpu.py),
# and XLA:CPU ran T gathers, each recomputing the hash ids (docs/benchmarks.md).
def hash_rows(table_TxVxD, hash_ids_BxSxT):
  """The rows [B, S, T, D] the hash ids select, table t for id column t."""
  return jax.vmap(lambda tab_VxD, ids_BxS: tab_VxD[ids_BxS], in_axes=(0, 2),
                  out_axes=2)(table_TxVxD, hash_ids_BxSxT)


# The training step's lookup and scatter (`optim.RowGradient`): one table at a time. In an
# isolated accumulation loop the batched forms are smaller, but the whole BLT-1B step at 8k
# bytes on v5e:2x4 compiles to 16.07 GiB per chip with them (refused; 15.65 with these) and
# 15.25 against 15.08 under a 15 GiB limit: the compiler packs the step worse (compiled for TPU
# v5e by XLA; docs/accelerators.md, "Hash-table lookups").
def hash_rows_per_table(table_TxVxD, hash_ids_BxSxT):
  """`hash_rows`, one table at a time."""
  return jnp.stack([table_TxVxD[t][hash_ids_BxSxT[..., t]]
                    for t in range(table_TxVxD.shape[0])], axis=2)


def add_hash_rows_per_table(acc_TxVxD, hash_ids_BxSxT, g_BxSxTxD):
  """`acc` plus the rows' gradient scattered back (the transpose of `hash_rows`)."""
  for t in range(acc_TxVxD.shape[0]):
    acc_TxVxD = acc_TxVxD.at[t].set(
      acc_TxVxD[t].at[hash_ids_BxSxT[..., t]].add(g_BxSxTxD[:, :, t].astype(acc_TxVxD.dtype)))
  return acc_TxVxD
