"""Tests for bltjax.modeling.patching: worked examples, NumPy references, incrementality, HF oracle.

The NumPy references below are written slot by slot from the rules (docs/architecture.md,
patching) and the official code's semantics (checked by hand against
`bytelatent/data/patcher.py`); the JAX code is vectorised, so they are independent
implementations.
"""

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bltjax.config import PatcherConfig
from bltjax.modeling import patching

# Worked example, checked with the official patcher functions.
EX_H = [5.0, 0.5, 2.0, 0.3, 0.2, 1.5, 0.1, 3.0]
EX_THETA = 1.0

# Incremental configurations (name, cfg); max_patch_length is added by the tests.
INCREMENTAL = [
  ("threshold", PatcherConfig(threshold=1.0)),
  ("monotonic", PatcherConfig(threshold=0.3, monotonicity=True)),
  ("add", PatcherConfig(threshold=1.0, threshold_add=0.2)),
  ("add_guard", PatcherConfig(threshold=1.0, threshold_add=0.2, threshold_add_guard=True)),
  ("space", PatcherConfig(mode="space")),
  ("static3", PatcherConfig(mode="static", patch_size=3)),
  ("byte", PatcherConfig(mode="byte")),
]
MAX_LENS = (None, 3)


def _cfgs(max_lens=MAX_LENS):
  for name, cfg in INCREMENTAL:
    for m in max_lens:
      yield f"{name}-m{m}", dataclasses.replace(cfg, max_patch_length=m)


CFGS = list(_cfgs())


def _np(x) -> np.ndarray:
  return np.asarray(jax.device_get(x))


def _starts_list(start_S1) -> list[int]:
  return np.nonzero(_np(start_S1))[0].tolist()


def _mask(starts: list[int], S: int) -> np.ndarray:
  m = np.zeros(S + 1, bool)
  m[starts] = True
  return m


# Jitted views of the API: compiling each function once per shape is much cheaper than eager
# dispatch of its many small ops, and checks that everything is jittable with static shapes.
_STATIC = {
  "entropy_patch_starts": ("cfg",),
  "lengths_from_starts": ("max_patches",),
  "to_official_lengths": ("max_patches",),
  "to_hf_lengths": ("max_patches",),
  "from_hf_lengths": ("S",),
  "from_official_lengths": ("S",),
  "starts_from_lengths": ("S",),
  "static_patch_starts": ("S", "patch_size"),
  "byte_patch_starts": ("S",),
  "apply_max_patch_length": ("m",),
}
P = types.SimpleNamespace(
  **{
    name: jax.jit(getattr(patching, name), static_argnames=_STATIC.get(name, ()))
    for name in (
      *_STATIC,
      "decoder_patch_ids_from_starts",
      "patch_ids_from_starts",
      "num_patches",
      "space_patch_starts",
      "open_patch_lengths",
      "entropies_from_logits",
    )
  }
)


# ----------------------------------------------------------------------------------------------
# NumPy references (one row).


def _space_like(i: int) -> bool:
  b = i - 4
  return (
    b < ord("0")
    or ord("9") < b < ord("A")
    or ord("Z") < b < ord("a")
    or ord("z") < b < 0x80
    or b >= 0xC0
  )


def ref_rule_starts(cfg: PatcherConfig, H, ids, L: int) -> list[int]:
  """Slot-by-slot rule starts of one row of length L (slots 0..L)."""
  out = []
  rule = {}
  for t in range(L + 1):
    if cfg.mode == "byte":
      s = True
    elif cfg.mode == "static":
      s = t % int(cfg.patch_size) == 0
    elif cfg.mode == "space":
      s = t <= 1 or (ids[t - 1] < 4 or (_space_like(ids[t - 1]) and not _space_like(ids[t - 2])))
    elif cfg.monotonicity:
      s = t <= 2 or H[t - 1] - H[t - 2] > cfg.threshold
    elif cfg.threshold_add is not None:
      if t <= 2:
        s = True
      else:
        cond = H[t - 1] > cfg.threshold and H[t - 1] - H[t - 2] > cfg.threshold_add
        # Official: the guard sees only the forced slot 2; intended: the recursion.
        prev = rule[t - 1] if cfg.threshold_add_guard else t - 1 == 2
        s = cond and not prev
    else:
      s = t <= 1 or H[t - 1] > cfg.threshold
    rule[t] = s
    if s:
      out.append(t)
  return out


def ref_split(lengths: list[int], m: int | None) -> list[int]:
  """Official `split_large_numbers` semantics."""
  if m is None:
    return list(lengths)
  out = []
  for n in lengths:
    while n > m:
      out.append(m)
      n -= m
    out.append(n)
  return out


def ref_lengths(starts: list[int], L: int) -> list[int]:
  return [b - a for a, b in zip(starts, starts[1:] + [L + 1])]


def ref_starts_from_lengths(lengths: list[int]) -> list[int]:
  return np.cumsum([0] + list(lengths))[:-1].tolist()


def ref_starts(cfg: PatcherConfig, H, ids, L: int) -> list[int]:
  lens = ref_split(ref_lengths(ref_rule_starts(cfg, H, ids, L), L), cfg.max_patch_length)
  return ref_starts_from_lengths(lens)


def ref_patch_ids_from_lengths(lengths, S: int) -> np.ndarray:
  """Official `patch_ids_from_lengths` (one row): cum_d includes the total."""
  cum_d = np.concatenate([[0], np.cumsum(lengths)])
  return (cum_d[:, None] <= np.arange(S)[None, :]).sum(0) - 1


# ----------------------------------------------------------------------------------------------
# Random inputs.


def _random_batch(seed: int, B: int = 6, S: int = 40):
  """Entropies clustered around the thresholds (1.0, and 0.2 / 0.3 for differences), space-mode
  ids mixing letters, digits, spaces, punctuation, UTF-8 lead/continuation bytes and specials."""
  rng = np.random.default_rng(seed)
  H = rng.choice([0.0, 0.5, 0.9, 1.0, 1.1, 1.3, 1.5, 2.0, 3.0], size=(B, S)) + rng.normal(
    0, 0.05, (B, S)
  )
  H = np.abs(H).astype(np.float32)
  alphabet = [ord(c) + 4 for c in "ab Z09 .,\n-"] + [0xC3 + 4, 0xA9 + 4, 0xE2 + 4, 0x80 + 4, 2, 3]
  ids = rng.choice(alphabet, size=(B, S)).astype(np.int32)
  ids[:, 0] = 1
  lengths = rng.integers(1, S + 1, size=B).astype(np.int32)
  lengths[0], lengths[1] = S, 1
  if B > 2:
    lengths[2] = 2
  for b in range(B):
    ids[b, lengths[b] :] = -1  # PAD; never read
  return H, ids, lengths


def _run(cfg, H, ids, lengths):
  return _np(
    _patch_starts_jit(cfg, jnp.asarray(ids), jnp.asarray(lengths), jnp.asarray(H, jnp.float32))
  )


@functools.partial(jax.jit, static_argnums=0)
def _patch_starts_jit(cfg, ids_BxS, lengths_B, H_BxS):
  return patching.patch_starts(cfg, ids_BxS=ids_BxS, lengths_B=lengths_B, H_BxS=H_BxS)


# ----------------------------------------------------------------------------------------------
# Worked examples, checked with the official patcher functions.


def test_worked_example_threshold():
  H = jnp.asarray([EX_H])
  start = P.entropy_patch_starts(H, jnp.array([8]), PatcherConfig(threshold=EX_THETA))
  assert _starts_list(start[0]) == [0, 1, 3, 6, 8]
  assert _np(P.num_patches(start)).tolist() == [5]
  lengths = P.lengths_from_starts(start)
  assert _np(lengths).tolist() == [[1, 2, 3, 2, 1, 0, 0, 0, 0]]
  assert _np(P.lengths_from_starts(start, max_patches=5)).tolist() == [[1, 2, 3, 2, 1]]
  assert _np(P.to_official_lengths(start, max_patches=5)).tolist() == [[1, 2, 3, 2, 1]]
  assert _np(P.patch_ids_from_starts(start)).tolist() == [[0, 1, 1, 2, 2, 2, 3, 3]]
  assert _np(P.decoder_patch_ids_from_starts(start)).tolist() == [[0, 0, 1, 1, 1, 2, 2, 3]]
  hf = P.to_hf_lengths(start, max_patches=5)
  assert _np(hf).tolist() == [[1, 2, 3, 2, 0]]
  assert _np(P.to_hf_lengths(jnp.array([[1, 2, 3, 2, 1]]))).tolist() == [[1, 2, 3, 2, 0]]
  back, L = P.from_hf_lengths(hf, 8)
  assert _starts_list(back[0]) == [0, 1, 3, 6, 8] and _np(L).tolist() == [8]
  back, L = P.from_official_lengths(jnp.array([[1, 2, 3, 2, 1, 0]]), 8)
  assert _starts_list(back[0]) == [0, 1, 3, 6, 8] and _np(L).tolist() == [8]
  # Official lengths -> decoder ids, as the official code computes them.
  assert ref_patch_ids_from_lengths([2, 3, 2, 1], 8).tolist() == [0, 0, 1, 1, 1, 2, 2, 3]
  # No entropy mode ever depends on H[S-1] for slots < S.
  H2 = H.at[0, 7].set(0.0)
  start2 = P.entropy_patch_starts(H2, jnp.array([8]), PatcherConfig(threshold=EX_THETA))
  assert _starts_list(start2[0]) == [0, 1, 3, 6]
  assert _np(P.lengths_from_starts(start2, max_patches=4)).tolist() == [[1, 2, 3, 3]]
  assert _np(P.to_hf_lengths(start2, max_patches=4)).tolist() == [[1, 2, 3, 2]]
  assert _np(P.decoder_patch_ids_from_starts(start2)).tolist() == [[0, 0, 1, 1, 1, 2, 2, 2]]


def test_worked_example_monotonic():
  cfg = PatcherConfig(threshold=EX_THETA, monotonicity=True)
  start = P.entropy_patch_starts(jnp.asarray([EX_H]), jnp.array([8]), cfg)
  assert _starts_list(start[0]) == [0, 1, 2, 3, 6, 8]


def test_threshold_add_official_and_guard():
  # Checked against the official find_entropy_patch_start_ids: [0, 1, 2, 4, 5, 6, 8, 9]. The
  # official guard blocks only slot 3 (right after the forced slot 2), despite cond(3).
  H = jnp.asarray([[0.0, 5.0, 6.0, 7.0, 8.0, 9.0, 0.0, 9.0, 10.0]])
  L = jnp.array([9])
  cfg = PatcherConfig(threshold=1.0, threshold_add=0.5)
  assert _starts_list(P.entropy_patch_starts(H, L, cfg)[0]) == [0, 1, 2, 4, 5, 6, 8, 9]
  guarded = dataclasses.replace(cfg, threshold_add_guard=True)
  # Runs of cond: {2 (forced), 3, 4, 5, 6} alternate -> 2, 4, 6; {8, 9} -> 8.
  assert _starts_list(P.entropy_patch_starts(H, L, guarded)[0]) == [0, 1, 2, 4, 6, 8]
  # Monotonicity takes precedence over threshold_add, as in the official code.
  both = dataclasses.replace(cfg, monotonicity=True)
  mono = PatcherConfig(threshold=1.0, monotonicity=True)
  np.testing.assert_array_equal(
    _np(P.entropy_patch_starts(H, L, both)), _np(P.entropy_patch_starts(H, L, mono))
  )


def test_worked_example_max_patch_length():
  start, L = P.from_official_lengths(jnp.array([[1, 16, 17, 3]]), 36)
  out = P.apply_max_patch_length(start, L, 8)
  assert _np(P.lengths_from_starts(out, 7, lengths_B=L)).tolist() == [[1, 8, 8, 8, 8, 1, 3]]
  assert ref_split([1, 16, 17, 3], 8) == [1, 8, 8, 8, 8, 1, 3]
  # m = 1 is byte patching; m >= every length changes nothing.
  assert _np(P.apply_max_patch_length(start, L, 1)).all()
  np.testing.assert_array_equal(_np(P.apply_max_patch_length(start, L, 17)), _np(start))


def test_space_example():
  text = b"ab  c.d" + "é".encode() + b"f"
  ids = jnp.asarray([[1] + [b + 4 for b in text]])
  start = P.space_patch_starts(ids, jnp.array([11]))
  assert _starts_list(start[0]) == [0, 1, 4, 7, 9]  # slot 11 (next) does not start: "f" goes on
  # A trailing space ends a patch, so the next slot starts one (official behaviour).
  ids2 = jnp.asarray([[1] + [b + 4 for b in text + b" "]])
  assert _starts_list(P.space_patch_starts(ids2, jnp.array([12]))[0]) == [0, 1, 4, 7, 9, 12]
  # Special ids (< 4) always end a patch, even after a space-like byte.
  ids3 = jnp.asarray([[1, ord(" ") + 4, 2, ord("a") + 4]])
  assert _starts_list(P.space_patch_starts(ids3, jnp.array([4]))[0]) == [0, 1, 3]
  # Rows of length 1 and 2 stop at their next slot.
  ids4 = jnp.asarray([[1, 40, 40], [1, 40, 40]])
  s4 = P.space_patch_starts(ids4, jnp.array([1, 2]))
  assert _starts_list(s4[0]) == [0, 1] and _starts_list(s4[1]) == [0, 1]


def test_static_and_byte():
  L = jnp.array([8, 7, 3, 1])
  start = P.static_patch_starts(L, 8, 4)
  lens = _np(P.lengths_from_starts(start, 4, lengths_B=L)).tolist()
  assert lens == [[4, 4, 1, 0], [4, 4, 0, 0], [4, 0, 0, 0], [2, 0, 0, 0]]
  # Official static decoder ids (patch_ids_from_lengths(lengths[1:], S)): no BOS-alone patch.
  dec = _np(P.decoder_patch_ids_from_starts(start, L))
  assert dec[0].tolist() == [0, 0, 0, 0, 1, 2, 2, 2]
  assert dec[0].tolist() == ref_patch_ids_from_lengths([4, 1], 8).tolist()
  assert dec[1, :7].tolist() == ref_patch_ids_from_lengths([4], 7).tolist()
  assert dec[2, :3].tolist() == ref_patch_ids_from_lengths([], 3).tolist()
  byte = P.byte_patch_starts(L, 8)
  assert _np(P.num_patches(byte)).tolist() == [9, 8, 4, 2]
  assert (_np(P.lengths_from_starts(byte, lengths_B=L)) <= 1).all()


def test_topk_mode():
  cfg = PatcherConfig(threshold=None, patch_size=4)
  H = jnp.asarray([np.arange(12.0) % 5], jnp.float32)
  # 12 // 4 = 3 patches: 0, 1 and the highest H[t-1] over t in 2..12 (a tie 4.0 at t = 5, 10:
  # the lowest slot wins, as torch.topk did here).
  assert _starts_list(P.entropy_patch_starts(H, jnp.array([12]), cfg)[0]) == [0, 1, 5]
  H2 = jnp.asarray([[0.0, 1.0, 9.0, 2.0, 8.0, 3.0, 7.0, 4.0, 0, 0, 0, 0]], jnp.float32)
  s = P.entropy_patch_starts(H2, jnp.array([8]), cfg)  # 8 // 4 - 2 = 0 free starts
  assert _starts_list(s[0]) == [0, 1]
  cfg2 = PatcherConfig(threshold=None, patch_size=2)  # 8 // 2 - 2 = 2: H[2] = 9, H[4] = 8
  assert _starts_list(P.entropy_patch_starts(H2, jnp.array([8]), cfg2)[0]) == [0, 1, 3, 5]
  # Not incremental: the prefix of length 6 picks a start that the full row does not have.
  full = _starts_list(P.entropy_patch_starts(H2, jnp.array([8]), cfg2)[0])
  pre = _starts_list(P.entropy_patch_starts(H2, jnp.array([6]), cfg2)[0])
  assert pre == [0, 1, 3] and pre != [s for s in full if s <= 6]
  # Short rows never get starts past their next slot.
  s1 = P.entropy_patch_starts(H2, jnp.array([1]), PatcherConfig(threshold=None, patch_size=0.5))
  assert _starts_list(s1[0]) == [0, 1]
  with pytest.raises(ValueError, match="not incremental"):
    patching.next_slot_starts(cfg, pos_B=jnp.array([0]), open_len_B=jnp.array([1]))


def test_short_rows_entropy_modes():
  H = jnp.full((3, 4), 5.0)
  L = jnp.array([1, 2, 3])
  for _, cfg in INCREMENTAL[:4]:
    start = _np(P.entropy_patch_starts(H, L, cfg))
    for b, l in enumerate([1, 2, 3]):
      assert not start[b, l + 1 :].any() and start[b, : min(l, 1) + 1].all()
  start = _np(P.entropy_patch_starts(H, L, PatcherConfig(threshold=1.0, monotonicity=True)))
  assert [_starts_list(r) for r in start] == [[0, 1], [0, 1, 2], [0, 1, 2]]


def test_entropies_from_logits():
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 3, (2, 5, 260)).astype(np.float32)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  ref = -(p * np.log(p)).sum(-1)
  H = P.entropies_from_logits(jnp.asarray(logits))
  assert H.dtype == jnp.float32 and H.shape == (2, 5)
  np.testing.assert_allclose(_np(H), ref, rtol=1e-5, atol=1e-5)
  Hbf = P.entropies_from_logits(jnp.asarray(logits, jnp.bfloat16))
  assert Hbf.dtype == jnp.float32
  uniform = P.entropies_from_logits(jnp.zeros((1, 1, 260)))
  np.testing.assert_allclose(_np(uniform), [[np.log(260)]], rtol=1e-6)
  masked = jnp.zeros((1, 1, 4)).at[0, 0, 2:].set(-jnp.inf)
  np.testing.assert_allclose(_np(P.entropies_from_logits(masked)), [[np.log(2)]], rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Ragged batches, conventions, references.


@jax.jit
def _derive(start_BxS1, lengths_B):
  """Every derived quantity of a batch of starts, in one compiled call."""
  S = start_BxS1.shape[1] - 1
  off = patching.lengths_from_starts(start_BxS1, lengths_B=lengths_B)
  hf = patching.to_hf_lengths(start_BxS1, lengths_B=lengths_B)
  n = patching.num_patches(start_BxS1)
  return {
    "off": off,
    "hf": hf,
    "n": n,
    "pid": patching.patch_ids_from_starts(start_BxS1),
    "dec": patching.decoder_patch_ids_from_starts(start_BxS1, lengths_B),
    "back": patching.from_official_lengths(off, S),
    "back_hf": patching.from_hf_lengths(hf, S, n),
  }


@pytest.mark.parametrize("name,cfg", CFGS, ids=[n for n, _ in CFGS])
def test_ragged_batch_matches_reference(name, cfg):
  del name
  S = 40
  for seed in range(3):
    H, ids, L = _random_batch(seed, S=S)
    start = _run(cfg, H, ids, L)
    assert start.shape == (len(L), S + 1)
    d = jax.tree.map(_np, _derive(jnp.asarray(start), jnp.asarray(L)))
    off, hf, n, pid, dec = d["off"], d["hf"], d["n"], d["pid"], d["dec"]
    for back, back_L in (d["back"], d["back_hf"]):
      np.testing.assert_array_equal(back, start)
      np.testing.assert_array_equal(back_L, L)
    assert (off >= 0).all() and (hf >= 0).all()
    np.testing.assert_array_equal(off.sum(1), L + 1)
    np.testing.assert_array_equal(hf.sum(1), L)
    # Rows are independent: each row moved into another batch (other rows, other lengths, other
    # values in its padding) gets the same starts.
    H2, ids2, L2 = _random_batch(seed + 50, S=S)
    for b in range(len(L)):
      l = int(L[b])
      want = ref_starts(cfg, H[b], ids[b], l)
      assert _starts_list(start[b]) == want, (b, l)
      lens = ref_lengths(want, l)
      assert off[b, : len(lens)].tolist() == lens and not off[b, len(lens) :].any()
      assert n[b] == len(lens)
      hf_want = lens[:-1] + [lens[-1] - 1]
      assert hf[b, : len(lens)].tolist() == hf_want and not hf[b, len(lens) :].any()
      np.testing.assert_array_equal(pid[b, :l], ref_patch_ids_from_lengths(lens, l))
      np.testing.assert_array_equal(dec[b, :l], ref_patch_ids_from_lengths(lens[1:], l))
      j = (b + 1) % len(L)
      H3, ids3, L3 = H2.copy(), ids2.copy(), L2.copy()
      H3[j, :l], ids3[j, :l], L3[j] = H[b, :l], ids[b, :l], l
      assert _starts_list(_run(cfg, H3, ids3, L3)[j]) == want


def test_lengths_conversions_misc():
  # Starts <-> lengths with padding and truncation.
  off = jnp.array([[1, 3, 2, 0, 0], [1, 1, 0, 0, 0], [2, 0, 0, 0, 0]])
  start, L = P.from_official_lengths(off, 6)
  assert _np(L).tolist() == [5, 1, 1]
  assert [_starts_list(r) for r in start] == [[0, 1, 4], [0, 1], [0]]
  np.testing.assert_array_equal(_np(P.lengths_from_starts(start, 5, lengths_B=L)), _np(off))
  assert _np(P.lengths_from_starts(start, 2, lengths_B=L)).tolist() == [[1, 3], [1, 1], [2, 0]]
  hf = _np(P.to_hf_lengths(off))
  assert hf.tolist() == [[1, 3, 1, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 0]]
  np.testing.assert_array_equal(_np(P.to_hf_lengths(start, 5, lengths_B=L)), hf)
  # HF forms: a trailing 0 within the patch count means the next slot starts a patch.
  s1, l1 = P.from_hf_lengths(jnp.array([[1, 0]]), 1)
  assert _starts_list(s1[0]) == [0, 1] and _np(l1).tolist() == [1]
  s2, _ = P.from_hf_lengths(jnp.array([[1, 2, 3, 2, 0, 0]]), 8, jnp.array([4]))
  assert _starts_list(s2[0]) == [0, 1, 3, 6]
  s3, _ = P.from_hf_lengths(jnp.array([[1, 2, 3, 2, 0, 0]]), 8, jnp.array([5]))
  assert _starts_list(s3[0]) == [0, 1, 3, 6, 8]
  s4 = P.starts_from_lengths(jnp.array([[1, 2, 3, 2, 1]]), 8)
  assert _starts_list(s4[0]) == [0, 1, 3, 6, 8]


def test_open_patch_lengths():
  start = jnp.asarray([_mask([0, 1, 3, 6, 8], 8)])
  got = [int(P.open_patch_lengths(start, jnp.array([t]))[0]) for t in range(9)]
  assert got == [1, 1, 2, 1, 2, 3, 1, 2, 1]


# ----------------------------------------------------------------------------------------------
# Incrementality.


@pytest.mark.parametrize("name,cfg", CFGS, ids=[n for n, _ in CFGS])
def test_prefix_property(name, cfg):
  """Patching a prefix equals the prefix of the patching (arXiv 2412.09871 §2.4)."""
  del name
  S = 40
  H, ids, L = _random_batch(7, S=S)
  full = _run(cfg, H, ids, L)
  for l in range(1, S + 1):
    Lp = np.minimum(L, l)
    pre = _run(cfg, H, ids, Lp)  # same arrays, shorter lengths
    for b in range(len(L)):
      np.testing.assert_array_equal(pre[b, : Lp[b] + 1], full[b, : Lp[b] + 1])
      assert not pre[b, Lp[b] + 1 :].any()
  # Truncated arrays (a different S) give the same answer.
  for l in (17,):
    pre = _run(cfg, H[:, :l], ids[:, :l], np.minimum(L, l))
    np.testing.assert_array_equal(
      pre, full[:, : l + 1] & (np.arange(l + 1) <= np.minimum(L, l)[:, None])
    )


@functools.partial(jax.jit, static_argnums=0)
def _decode_scan(cfg, ids_BxS, H_BxS, rule0_B):
  """Decides slots 1..S with next_slot_starts, carrying the per-row decoding state."""
  B, S = ids_BxS.shape

  def step(carry, t):
    open_len_B, rule_B, H_prev_B, id_prev_B = carry
    H_B, id_B = H_BxS[:, t], ids_BxS[:, t]
    start_B, rule_B = patching.next_slot_starts(
      cfg,
      pos_B=jnp.full((B,), t, jnp.int32),
      open_len_B=open_len_B,
      H_B=H_B,
      H_prev_B=H_prev_B,
      rule_start_B=rule_B,
      id_B=id_B,
      id_prev_B=id_prev_B,
    )
    open_len_B = jnp.where(start_B, 1, open_len_B + 1)
    return (open_len_B, rule_B, H_B, id_B), (start_B, rule_B, open_len_B)

  init = (
    jnp.ones((B,), jnp.int32),
    rule0_B,
    jnp.zeros((B,), jnp.float32),
    jnp.zeros((B,), jnp.int32),
  )
  _, (start_SxB, rule_SxB, open_SxB) = jax.lax.scan(step, init, jnp.arange(S))
  return start_SxB.T, rule_SxB.T, open_SxB.T


@pytest.mark.parametrize("name,cfg", CFGS, ids=[n for n, _ in CFGS])
def test_next_slot_starts_matches_patch_starts(name, cfg):
  """The cached decoder's per-step rule equals full patching on every prefix."""
  del name
  S = 40
  rule_cfg = dataclasses.replace(cfg, max_patch_length=None)
  for seed in range(4):
    H, ids, _ = _random_batch(100 + seed, S=S)
    L = np.full(len(H), S, np.int32)  # step t < S decides slot t + 1 <= S
    full = _run(cfg, H, ids, L)
    rule = _run(rule_cfg, H, ids, L)
    start, rule_steps, open_len = jax.tree.map(
      _np, _decode_scan(cfg, jnp.asarray(ids), jnp.asarray(H), jnp.ones((len(H),), bool))
    )
    np.testing.assert_array_equal(start, full[:, 1:])
    np.testing.assert_array_equal(rule_steps, rule[:, 1:])
    # The carried open length equals what a prefill would compute from the starts.
    for t in range(S):
      got = _np(P.open_patch_lengths(jnp.asarray(full), jnp.full(len(H), t + 1, jnp.int32)))
      np.testing.assert_array_equal(open_len[:, t], got)


# ----------------------------------------------------------------------------------------------
# HF oracle (docs/testing.md): the pure patch-length functions of transformers' BLT port.

S_ORACLE = 72  # our side pads every row to this width (one compile); HF gets the exact length
THETA = 1.0


@functools.partial(jax.jit, static_argnums=0)
def _ours_for_oracle(cfg, H_BxS, lengths_B, hf_BxP, hf_n):
  ids = jnp.ones(H_BxS.shape, jnp.int32)
  from_hf, from_hf_L = patching.from_hf_lengths(
    hf_BxP, H_BxS.shape[1], jnp.full_like(lengths_B, hf_n)
  )
  start = patching.patch_starts(cfg, ids_BxS=ids, lengths_B=lengths_B, H_BxS=H_BxS)
  return {
    "start": start,
    "n": patching.num_patches(start),
    "off": patching.lengths_from_starts(start, lengths_B=lengths_B),
    "hf": patching.to_hf_lengths(start, lengths_B=lengths_B),
    "pid": patching.patch_ids_from_starts(start),
    "dec": patching.decoder_patch_ids_from_starts(start, lengths_B),
    "from_hf": from_hf,
    "from_hf_L": from_hf_L,
  }


@pytest.mark.oracle
def test_hf_patcher_oracle():
  """Batch size 1, same entropies: HF's lengths equal ours in HF form (lengths 1..71).

  Without max_patch_length: exact equality of lengths (incl. the trailing 0 of a next-slot
  patch), patch ids and decoder patch ids. With max_patch_length, HF's `process_patch_lengths`
  splits its S-sum lengths and drops 0 lengths, so it loses the next-slot patch whenever the
  official split (over S + 1 slots) starts one: then HF equals ours minus that trailing 0. All
  real positions still agree, and patch ids agree; decoder ids differ only at the last byte.
  """
  torch = pytest.importorskip("torch")
  mb = pytest.importorskip("transformers.models.blt.modeling_blt")
  rng = np.random.default_rng(11)
  hf_ids = lambda lens, S: mb.BltModel._patch_ids_from_lengths(None, torch.from_numpy(lens), S)
  dropped = 0
  for S in [*range(1, 36), 47, 63, S_ORACLE - 1]:
    logits = rng.normal(0, 6, (1, S, 260)).astype(np.float32)
    logits *= rng.uniform(0.05, 1.0, (1, S, 1)).astype(np.float32)
    H_t = torch.distributions.Categorical(logits=torch.from_numpy(logits)).entropy()
    # A fixed threshold (one compile per m): scale the entropies instead, then feed the very
    # same fp32 values to both sides.
    H_np = H_t.numpy().astype(np.float32)
    H_np /= np.float32(np.median(H_np[0, 1:]) if S > 1 else 1.0)
    if S % 5 == 0:
      H_np[0, -1] = THETA  # the next slot sits exactly at the threshold
    H_pt = torch.from_numpy(H_np)
    H_pad = jnp.asarray(np.pad(H_np, ((0, 0), (0, S_ORACLE - S)), constant_values=9.0))
    for m in (None, 2, 3):
      cfg = PatcherConfig(threshold=THETA, max_patch_length=m)
      hf = mb.BltPatcher.patch_lengths_from_entropies(H_pt, S, patch_size=4, threshold=THETA)
      hf = mb.process_patch_lengths(hf, m).numpy()
      hf_pad = np.pad(hf, ((0, 0), (0, S_ORACLE + 1 - hf.shape[1])))
      o = jax.tree.map(
        _np, _ours_for_oracle(cfg, H_pad, jnp.array([S]), jnp.asarray(hf_pad), hf.shape[1])
      )
      n = int(o["n"][0])
      ours = o["hf"][:, :n]
      if m is not None and ours[0, -1] == 0:
        assert o["start"][0, S]  # the next slot starts a patch; HF dropped its 0 length
        ours = ours[:, :-1]
        dropped += 1
      np.testing.assert_array_equal(ours, hf, err_msg=f"S={S} m={m}")
      np.testing.assert_array_equal(o["pid"][:, :S], hf_ids(hf, S).numpy())
      if m is None:
        np.testing.assert_array_equal(o["dec"][:, :S], hf_ids(hf[:, 1:], S).numpy())
        np.testing.assert_array_equal(o["from_hf"], o["start"])
        assert int(o["from_hf_L"][0]) == S
  assert dropped > 0  # the divergence was exercised


@pytest.mark.oracle
def test_entropies_match_torch():
  torch = pytest.importorskip("torch")
  logits = np.random.default_rng(3).normal(0, 6, (2, 9, 260)).astype(np.float32)
  want = torch.distributions.Categorical(logits=torch.from_numpy(logits)).entropy().numpy()
  got = _np(P.entropies_from_logits(jnp.asarray(logits)))
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)
