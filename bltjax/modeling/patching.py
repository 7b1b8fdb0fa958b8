"""Patch boundaries: entropy / space / static / byte patchers and derived patch ids.

Patching modes: arXiv 2412.09871 §2; this project's conventions: docs/architecture.md.

Internal representation: a boolean `start_BxS1` over S + 1 slots. Slot t is True iff
position t starts a patch; slot S is the "next token" slot. Rows are right-padded: row b has
`lengths_B[b]` real ids, its next slot is at index `lengths_B[b]`, and every slot after it is False.
Slot 0 is always a start. Lengths, patch ids and decoder patch ids are derived from the starts.

Length conventions (docs/testing.md), for the starts {0, 1, 3, 6, 8} of a row with 8 ids:
  official: [1, 2, 3, 2, 1]  the last patch includes the next slot; rows sum to length + 1.
  HF:       [1, 2, 3, 2, 0]  the last end is clamped to length - 1; rows sum to length.
Both are right-padded with 0. In the HF form a trailing 0 (the next slot starting a patch) cannot be
told apart from padding, so `from_hf_lengths` takes the patch count when rows are padded.

"Rule starts" are the starts of a mode before `max_patch_length` splitting; `patch_starts` is
`apply_max_patch_length(rule_patch_starts(...))`. Every mode except top-k entropy is incremental:
whether slot t starts a patch depends only on ids < t (entropies H[< t]), so a prefix's patching is
the prefix of the patching, and `next_slot_starts` decides slot t + 1 from per-row decoding state.

Everything here is jittable with static shapes (pass `cfg`, `S`, `patch_size`, `m` and
`max_patches` as static values) and works on ragged batches.
"""

import jax
import jax.numpy as jnp

from bltjax.config import OFFSET, PatcherConfig

# ----------------------------------------------------------------------------------------------
# Small helpers.


def _slots(lengths_B: jnp.ndarray, S: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(t_1xS1 slot indices, valid_BxS1 = t <= length)."""
  t_1xS1 = jnp.arange(S + 1, dtype=jnp.int32)[None, :]
  return t_1xS1, t_1xS1 <= jnp.asarray(lengths_B, jnp.int32)[:, None]


def _lengths_or_full(lengths_B: jnp.ndarray | None, B: int, S: int) -> jnp.ndarray:
  if lengths_B is None:
    return jnp.full((B,), S, jnp.int32)
  return jnp.asarray(lengths_B, jnp.int32)


def _shift_right(x_BxN: jnp.ndarray, k: int, fill) -> jnp.ndarray:
  """y[:, t] = x[:, t - k], `fill` for t < k (same length)."""
  pad = jnp.full((x_BxN.shape[0], k), fill, x_BxN.dtype)
  return jnp.concatenate([pad, x_BxN[:, : x_BxN.shape[1] - k]], axis=1)


def _last_index_le(mask_BxN: jnp.ndarray) -> jnp.ndarray:
  """For each t, the largest u <= t with mask[u] (-1 if none)."""
  t_1xN = jnp.arange(mask_BxN.shape[1], dtype=jnp.int32)[None, :]
  return jax.lax.cummax(jnp.where(mask_BxN, t_1xN, -1), axis=1)


# ----------------------------------------------------------------------------------------------
# Entropies.


def entropies_from_logits(logits_BxSxV: jnp.ndarray) -> jnp.ndarray:
  """Entropy in nats of each next-byte distribution, H = -sum p log p, always in fp32.

  Near-threshold entropies flip boundaries between precisions (docs/choices.md), hence fp32 even for
  bf16 logits. Entries with p = 0 (logit -inf) contribute 0 instead of 0 * -inf = nan.
  """
  logp_BxSxV = jax.nn.log_softmax(logits_BxSxV.astype(jnp.float32), axis=-1)
  p_BxSxV = jnp.exp(logp_BxSxV)
  plogp_BxSxV = jnp.where(p_BxSxV > 0, p_BxSxV * logp_BxSxV, 0.0)
  return -jnp.sum(plogp_BxSxV, axis=-1)


# ----------------------------------------------------------------------------------------------
# Rule starts per mode.


def entropy_patch_starts(
  H_BxS: jnp.ndarray, lengths_B: jnp.ndarray, cfg: PatcherConfig
) -> jnp.ndarray:
  """Entropy-mode rule starts (before `max_patch_length`), following the official patcher.

  H[t] is the entropy of the prediction at position t (of id t + 1), so slot t reads H[t - 1];
  the next slot t = length is decided by H[length - 1] (`include_next_token=True`).

  * Global threshold θ (release): slots 0, 1 forced; t >= 2 starts iff H[t-1] > θ.
  * `monotonicity`: slots 0, 1, 2 forced; t >= 3 starts iff H[t-1] - H[t-2] > θ.
  * `threshold_add` θ_a: slots 0, 1, 2 forced; t >= 4 starts iff H[t-1] > θ and
    H[t-1] - H[t-2] > θ_a. Slot 3 never starts: the official "no two starts in a row" guard reads
    the mask before it is filled, in which only the forced slot 2 is set, so the guard fires only
    at slot 3 (checked against `patch_start_mask_global_and_monotonicity`).
    With `threshold_add_guard=True` the guard is the intended recursion over the rule starts:
    rule[2] = True, rule[t] = cond[t] and not rule[t-1] for t >= 3. Within a run of consecutive
    slots satisfying cond (slot 2 counts as satisfying it), starts alternate True, False, True, ...
    The guard looks only at rule starts: a start forced by `max_patch_length` does not block t.
  * `threshold=None` (top-k, NOT incremental): a row of length L gets K = floor(L / patch_size)
    patches (as the official `seq_len // patch_size`): slots 0, 1 and the K - 2 slots t in 2..L
    with the highest H[t-1]. Ties go to the lowest slot; K - 2 is clipped to [0, L - 1] (the
    official code fails for K < 2). Whether a slot starts depends on the whole row.

  Monotonicity wins over threshold_add, as in the official code. Modes with forced slots never set
  a slot past the next slot, so rows of length 1 or 2 end at their next slot.

  Args:
    H_BxS: entropies in nats (positions >= length are ignored).
    lengths_B: number of real ids per row.
    cfg: the patcher config (mode is not checked here).

  Returns:
    start_BxS1 rule starts.
  """
  S = H_BxS.shape[1]
  H_BxS = H_BxS.astype(jnp.float32)
  t_1xS1, valid_BxS1 = _slots(lengths_B, S)
  # Hm1[:, t] = H[t-1], Hm2[:, t] = H[t-2] over the S + 1 slots; fills are never read.
  Hm1_BxS1 = _shift_right(jnp.pad(H_BxS, ((0, 0), (0, 1))), 1, 0.0)
  Hm2_BxS1 = _shift_right(Hm1_BxS1, 1, 0.0)

  if cfg.threshold is None:
    return _topk_starts(Hm1_BxS1, lengths_B, cfg.patch_size) & valid_BxS1

  theta = cfg.threshold
  if cfg.monotonicity:
    start_BxS1 = (t_1xS1 <= 2) | (Hm1_BxS1 - Hm2_BxS1 > theta)
  elif cfg.threshold_add is not None:
    cond_BxS1 = (Hm1_BxS1 > theta) & (Hm1_BxS1 - Hm2_BxS1 > cfg.threshold_add)
    if cfg.threshold_add_guard:
      start_BxS1 = (t_1xS1 <= 1) | _alternate_runs(cond_BxS1 | (t_1xS1 == 2), t_1xS1)
    else:
      start_BxS1 = (t_1xS1 <= 2) | (cond_BxS1 & (t_1xS1 >= 4))
  else:
    start_BxS1 = (t_1xS1 <= 1) | (Hm1_BxS1 > theta)
  return start_BxS1 & valid_BxS1


def _alternate_runs(cond_BxS1: jnp.ndarray, t_1xS1: jnp.ndarray) -> jnp.ndarray:
  """rule[t] = cond[t] and not rule[t-1] for t >= 2 (slots < 2 are run breaks), vectorised.

  Inside a run of consecutive True cond slots the recursion alternates True, False, ..., so
  rule[t] = cond[t] and (t - run start) is even.
  """
  brk_BxS1 = (t_1xS1 <= 1) | ~cond_BxS1
  run_start_BxS1 = _shift_right(_last_index_le(brk_BxS1), 1, -1) + 1
  return cond_BxS1 & (t_1xS1 >= 2) & ((t_1xS1 - run_start_BxS1) % 2 == 0)


def _topk_starts(Hm1_BxS1: jnp.ndarray, lengths_B: jnp.ndarray, patch_size: float) -> jnp.ndarray:
  B, S1 = Hm1_BxS1.shape
  lengths_B = jnp.asarray(lengths_B, jnp.int32)
  t_1xS1 = jnp.arange(S1, dtype=jnp.int32)[None, :]
  cand_BxS1 = (t_1xS1 >= 2) & (t_1xS1 <= lengths_B[:, None])
  k_B = jnp.floor(lengths_B.astype(jnp.float32) / patch_size).astype(jnp.int32) - 2
  k_B = jnp.clip(k_B, 0, jnp.maximum(lengths_B - 1, 0))
  # Stable ascending sort of -H: highest entropy first, ties by slot; non-candidates go last.
  key_BxS1 = jnp.where(cand_BxS1, -Hm1_BxS1, jnp.inf)
  order_BxS1 = jnp.argsort(key_BxS1, axis=1, stable=True)
  rank_BxS1 = jnp.zeros_like(order_BxS1).at[jnp.arange(B)[:, None], order_BxS1].set(t_1xS1)
  return (t_1xS1 <= 1) | (cand_BxS1 & (rank_BxS1 < k_B[:, None]))


def _space_like(ids: jnp.ndarray) -> jnp.ndarray:
  """Not [0-9A-Za-z] and not a UTF-8 continuation byte; ids < OFFSET count as space-like."""
  b = ids - OFFSET
  return (
    (b < ord("0"))
    | ((b > ord("9")) & (b < ord("A")))
    | ((b > ord("Z")) & (b < ord("a")))
    | ((b > ord("z")) & (b < 0x80))
    | (b >= 0xC0)
  )


def _ends_patch(id_: jnp.ndarray, id_prev: jnp.ndarray) -> jnp.ndarray:
  """Space mode: does the byte `id_` (preceded by `id_prev`) end a patch."""
  return (_space_like(id_) & ~_space_like(id_prev)) | (id_ < OFFSET)


def space_patch_starts(ids_BxS: jnp.ndarray, lengths_B: jnp.ndarray) -> jnp.ndarray:
  """Space-mode starts (arXiv 2412.09871 §2.2, official `find_space_patch_start_ids`).

  Slots 0 and 1 are forced; slot t >= 2 starts iff id t - 1 ends a patch: it is space-like and the
  id before it is not, or it is a special id (< 4). This includes the next slot: slot `length`
  starts a patch iff the last id ends a patch, as in the official code. A lead byte >= 0xC0 is
  space-like, so a patch can start inside a multi-byte character.
  Example: BOS + "ab  c.d" + é + "f" has starts [0, 1, 4, 7, 9] and no next-slot start; one more
  trailing " " gives [0, 1, 4, 7, 9, 12] with 12 the next slot.
  """
  S = ids_BxS.shape[1]
  ids_BxS = jnp.asarray(ids_BxS, jnp.int32)
  t_1xS1, valid_BxS1 = _slots(lengths_B, S)
  ids_BxS1 = jnp.pad(ids_BxS, ((0, 0), (0, 1)))
  end_BxS1 = _ends_patch(ids_BxS1, _shift_right(ids_BxS1, 1, 0))  # end of id t (slot t+1 starts)
  return ((t_1xS1 <= 1) | _shift_right(end_BxS1, 1, False)) & valid_BxS1


def static_patch_starts(lengths_B: jnp.ndarray, S: int, patch_size: int) -> jnp.ndarray:
  """Static mode: all patches `patch_size` long over the length + 1 slots, the last one shorter.

  There is no BOS-alone patch (official `Patcher.patch` static branch).
  """
  t_1xS1, valid_BxS1 = _slots(lengths_B, S)
  return (t_1xS1 % int(patch_size) == 0) & valid_BxS1


def byte_patch_starts(lengths_B: jnp.ndarray, S: int) -> jnp.ndarray:
  """Byte mode: every slot, including the next slot, starts a patch."""
  return _slots(lengths_B, S)[1]


def apply_max_patch_length(start_BxS1: jnp.ndarray, lengths_B: jnp.ndarray, m: int) -> jnp.ndarray:
  """Splits every patch longer than `m` slots greedily into m, m, ..., remainder.

  This is the official `split_large_numbers` on the S+1 lengths (the last patch includes the next
  slot), so [1, 16, 17, 3] with m = 8 gives [1, 8, 8, 8, 8, 1, 3]. Slot t starts a patch iff
  t - (last original start <= t) is a multiple of m, which depends only on slots <= t: the split
  keeps an incremental patching incremental (a start at t depends on original slots <= t, which
  in turn depend only on ids < t).

  Note HF's `process_patch_lengths` splits its S-sum lengths instead; see `to_hf_lengths`.
  """
  S1 = start_BxS1.shape[1]
  t_1xS1, valid_BxS1 = _slots(lengths_B, S1 - 1)
  last_BxS1 = _last_index_le(start_BxS1)
  return ((t_1xS1 - last_BxS1) % m == 0) & (last_BxS1 >= 0) & valid_BxS1


def rule_patch_starts(
  cfg: PatcherConfig,
  *,
  ids_BxS: jnp.ndarray,
  lengths_B: jnp.ndarray,
  H_BxS: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """The mode's starts before `max_patch_length` (see `patch_starts`)."""
  S = ids_BxS.shape[1]
  if cfg.mode == "entropy":
    if H_BxS is None:
      raise ValueError("entropy patching needs H_BxS")
    return entropy_patch_starts(H_BxS, lengths_B, cfg)
  if cfg.mode == "space":
    return space_patch_starts(ids_BxS, lengths_B)
  if cfg.mode == "static":
    return static_patch_starts(lengths_B, S, int(cfg.patch_size))
  if cfg.mode == "byte":
    return byte_patch_starts(lengths_B, S)
  raise ValueError(f"unknown patching mode {cfg.mode!r}")


def patch_starts(
  cfg: PatcherConfig,
  *,
  ids_BxS: jnp.ndarray,
  lengths_B: jnp.ndarray,
  H_BxS: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """Patch starts of a batch: the mode's rule (cfg.mode), then cfg.max_patch_length.

  Args:
    cfg: patcher config (static).
    ids_BxS: right-padded ids (used by space mode; its width S fixes the shapes).
    lengths_B: real ids per row (>= 1: BOS).
    H_BxS: entropies (nats) at each position, needed by entropy mode.

  Returns:
    start_BxS1, True at each patch start; slots > lengths_B are False.
  """
  start_BxS1 = rule_patch_starts(cfg, ids_BxS=ids_BxS, lengths_B=lengths_B, H_BxS=H_BxS)
  if cfg.max_patch_length is not None:
    start_BxS1 = apply_max_patch_length(start_BxS1, lengths_B, cfg.max_patch_length)
  return start_BxS1


# ----------------------------------------------------------------------------------------------
# Incremental decoding.


def next_slot_starts(
  cfg: PatcherConfig,
  *,
  pos_B: jnp.ndarray,
  open_len_B: jnp.ndarray,
  H_B: jnp.ndarray | None = None,
  H_prev_B: jnp.ndarray | None = None,
  rule_start_B: jnp.ndarray | None = None,
  id_B: jnp.ndarray | None = None,
  id_prev_B: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Per-step rule of the cached decoder: does slot t + 1 start a patch, given ids 0..t.

  For every incremental mode, and every row and t, this equals `patch_starts(...)[b, t + 1]` of
  any sequence with those first t + 1 ids (and entropies), however long it is. Slot 0 is always a
  start; call this for t >= 0.

  Args:
    cfg: patcher config; top-k entropy mode (threshold None) is rejected: not incremental.
    pos_B: t, the position of the newest committed id (int32, >= 0).
    open_len_B: slots in the currently open patch from its start through slot t, after
      `max_patch_length` splitting (>= 1; 1 when slot t started a patch). Only read when
      cfg.max_patch_length is set. `open_patch_lengths` gives it after a prefill.
    H_B: entropy H[t] of the prediction at position t (entropy mode).
    H_prev_B: H[t - 1] (monotonicity / threshold_add); unused when t == 0.
    rule_start_B: whether slot t started a patch by the mode's rule, i.e. before
      `max_patch_length` (the second output of the previous step, or `rule_patch_starts` after a
      prefill). Only read with threshold_add and threshold_add_guard=True.
    id_B: id at position t (space mode).
    id_prev_B: id at position t - 1 (space mode); unused when t == 0.

  Returns:
    (start_B, rule_start_B): whether slot t + 1 starts a patch, and whether it does by the mode's
    rule alone (carry it as the next step's `rule_start_B`). The caller then updates
    open_len_B = where(start_B, 1, open_len_B + 1) once id t + 1 is committed.
  """
  pos_B = jnp.asarray(pos_B, jnp.int32)
  u_B = pos_B + 1  # the slot being decided
  if cfg.mode == "entropy":
    if cfg.threshold is None:
      raise ValueError("top-k entropy patching (threshold=None) is not incremental")
    H_B = jnp.asarray(H_B, jnp.float32)
    theta = cfg.threshold
    if cfg.monotonicity:
      rule_B = (u_B <= 2) | (H_B - jnp.asarray(H_prev_B, jnp.float32) > theta)
    elif cfg.threshold_add is not None:
      cond_B = (H_B > theta) & (H_B - jnp.asarray(H_prev_B, jnp.float32) > cfg.threshold_add)
      if cfg.threshold_add_guard:
        cond_B &= ~jnp.asarray(rule_start_B, bool)
      # Slot 3 follows the forced slot 2: blocked by the guard in both variants.
      rule_B = (u_B <= 2) | (cond_B & (u_B >= 4))
    else:
      rule_B = (u_B <= 1) | (H_B > theta)
  elif cfg.mode == "space":
    rule_B = (u_B <= 1) | _ends_patch(
      jnp.asarray(id_B, jnp.int32), jnp.asarray(id_prev_B, jnp.int32)
    )
  elif cfg.mode == "static":
    rule_B = u_B % int(cfg.patch_size) == 0
  elif cfg.mode == "byte":
    rule_B = jnp.ones_like(u_B, bool)
  else:
    raise ValueError(f"unknown patching mode {cfg.mode!r}")
  start_B = rule_B
  if cfg.max_patch_length is not None:
    start_B = rule_B | (jnp.asarray(open_len_B, jnp.int32) >= cfg.max_patch_length)
  return start_B, rule_B


def open_patch_lengths(start_BxS1: jnp.ndarray, pos_B: jnp.ndarray) -> jnp.ndarray:
  """Slots in the patch containing slot `pos_B`, from its start through pos_B (decoder state)."""
  last_BxS1 = _last_index_le(start_BxS1)
  pos_B = jnp.asarray(pos_B, jnp.int32)
  return pos_B - jnp.take_along_axis(last_BxS1, pos_B[:, None], axis=1)[:, 0] + 1


# ----------------------------------------------------------------------------------------------
# Derived ids.


def patch_ids_from_starts(start_BxS1: jnp.ndarray) -> jnp.ndarray:
  """patch_ids[t] = (number of starts <= t) - 1, for t in 0..S-1.

  Equals the official `patch_ids_from_lengths(lengths, S)` at real positions; padding positions
  get the id of the row's last patch (mask them).
  """
  return (jnp.cumsum(start_BxS1.astype(jnp.int32), axis=-1) - 1)[:, :-1]


def decoder_patch_ids_from_starts(
  start_BxS1: jnp.ndarray, lengths_B: jnp.ndarray | None = None
) -> jnp.ndarray:
  """The patch whose latent byte t reads: official `patch_ids_from_lengths(lengths[:, 1:], S)`.

  With l0 the first patch's length and L the row length (default S), this is
    dec(t) = #{starts s : 1 <= s <= t + l0} - 1 + [t + l0 > L],
  where the last term is the official total-length boundary (cum_d includes it). When slot 1 is a
  start (l0 = 1: entropy, space, byte modes) it reduces to dec(t) = patch_ids[t + 1] - 1, with
  patch_ids[S] the next-slot patch. In static mode (l0 = patch_size) the official value for
  t >= L + 1 - l0 is the last patch, which is what this returns; `lengths_B` matters only there
  and at padding positions. Values are per row (the official batched code, fed padded lengths,
  depends on the padding width at those positions).
  """
  B, S1 = start_BxS1.shape
  S = S1 - 1
  L_B = _lengths_or_full(lengths_B, B, S)
  cs_BxS1 = jnp.cumsum(start_BxS1.astype(jnp.int32), axis=-1)
  rest_BxS = start_BxS1[:, 1:]
  l0_B = jnp.where(jnp.any(rest_BxS, axis=1), jnp.argmax(rest_BxS, axis=1) + 1, L_B + 1)
  q_BxS = jnp.arange(S, dtype=jnp.int32)[None, :] + l0_B[:, None]
  idx_BxS = jnp.minimum(q_BxS, L_B[:, None])
  c_BxS = jnp.take_along_axis(cs_BxS1, idx_BxS, axis=1) - start_BxS1[:, :1].astype(jnp.int32)
  dec_BxS = c_BxS - 1 + (q_BxS > L_B[:, None]).astype(jnp.int32)
  return jnp.maximum(dec_BxS, 0)


def num_patches(start_BxS1: jnp.ndarray) -> jnp.ndarray:
  """Patches per row, including the next-slot patch when the next slot starts one."""
  return jnp.sum(start_BxS1.astype(jnp.int32), axis=-1)


# ----------------------------------------------------------------------------------------------
# Length conventions.


def lengths_from_starts(
  start_BxS1: jnp.ndarray,
  max_patches: int | None = None,
  lengths_B: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """Official S+1 lengths: patch p spans slots [s_p, s_{p+1}), the last one through the next slot.

  Args:
    start_BxS1: patch starts.
    max_patches: output width P (static); default S + 1. Patches past P are dropped.
    lengths_B: real ids per row (default: S for every row). Row b sums to lengths_B[b] + 1.

  Returns:
    lengths_BxP int32, right-padded with 0, never negative.
  """
  B, S1 = start_BxS1.shape
  P = S1 if max_patches is None else max_patches
  _, valid_BxS1 = _slots(_lengths_or_full(lengths_B, B, S1 - 1), S1 - 1)
  pid_BxS1 = jnp.cumsum(start_BxS1.astype(jnp.int32), axis=-1) - 1
  pid_BxS1 = jnp.where(valid_BxS1 & (pid_BxS1 >= 0), pid_BxS1, P)  # P: dropped
  rows_Bx1 = jnp.arange(B)[:, None]
  return jnp.zeros((B, P), jnp.int32).at[rows_Bx1, pid_BxS1].add(1, mode="drop")


def starts_from_lengths(lengths_BxP: jnp.ndarray, S: int) -> jnp.ndarray:
  """Starts at the offsets of the positive lengths (zero entries are skipped), over S + 1 slots."""
  lengths_BxP = jnp.asarray(lengths_BxP, jnp.int32)
  B = lengths_BxP.shape[0]
  off_BxP = jnp.cumsum(lengths_BxP, axis=-1) - lengths_BxP
  off_BxP = jnp.where(lengths_BxP > 0, off_BxP, S + 1)  # S + 1: dropped
  rows_Bx1 = jnp.arange(B)[:, None]
  return jnp.zeros((B, S + 1), bool).at[rows_Bx1, off_BxP].set(True, mode="drop")


def to_official_lengths(
  start_BxS1: jnp.ndarray,
  max_patches: int | None = None,
  lengths_B: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """Alias of `lengths_from_starts` (rows sum to length + 1)."""
  return lengths_from_starts(start_BxS1, max_patches, lengths_B)


def from_official_lengths(lengths_BxP: jnp.ndarray, S: int) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(start_BxS1, lengths_B) from official lengths; a row summing to n has n - 1 real ids."""
  lengths_BxP = jnp.asarray(lengths_BxP, jnp.int32)
  return starts_from_lengths(lengths_BxP, S), jnp.sum(lengths_BxP, axis=-1) - 1


def to_hf_lengths(
  starts_or_lengths: jnp.ndarray,
  max_patches: int | None = None,
  lengths_B: jnp.ndarray | None = None,
) -> jnp.ndarray:
  """HF `BltPatcher` lengths: the official ones with the last patch one shorter (rows sum to L).

  A next-slot patch of length 1 becomes a trailing 0, never -1 (HF's batched patcher can emit -1).

  Args:
    starts_or_lengths: boolean start_BxS1, or int official lengths_BxP (then the other arguments
      are ignored).
    max_patches, lengths_B: as in `lengths_from_starts`, for boolean starts.

  Returns:
    lengths_BxP int32, 0-padded; the first `num_patches` entries of a row are its patches.
  """
  if starts_or_lengths.dtype == jnp.bool_:
    off_BxP = lengths_from_starts(starts_or_lengths, max_patches, lengths_B)
  else:
    off_BxP = jnp.asarray(starts_or_lengths, jnp.int32)
  last_B = jnp.sum((off_BxP > 0).astype(jnp.int32), axis=-1) - 1
  p_1xP = jnp.arange(off_BxP.shape[1], dtype=jnp.int32)[None, :]
  return jnp.maximum(off_BxP - (p_1xP == last_B[:, None]).astype(jnp.int32), 0)


def from_hf_lengths(
  lengths_BxP: jnp.ndarray, S: int, num_patches_B: jnp.ndarray | None = None
) -> tuple[jnp.ndarray, jnp.ndarray]:
  """(start_BxS1, lengths_B) from HF lengths (rows sum to their length L; entries must be >= 0).

  The next slot L starts a patch iff the row has a 0 among its first `num_patches_B` entries
  (default: all P entries, i.e. an unpadded HF output such as [1, 2, 3, 2, 0]).
  """
  lengths_BxP = jnp.asarray(lengths_BxP, jnp.int32)
  B, P = lengths_BxP.shape
  n_B = jnp.full((B,), P, jnp.int32) if num_patches_B is None else jnp.asarray(num_patches_B)
  L_B = jnp.sum(lengths_BxP, axis=-1)
  n_pos_B = jnp.sum((lengths_BxP > 0).astype(jnp.int32), axis=-1)
  t_1xS1 = jnp.arange(S + 1, dtype=jnp.int32)[None, :]
  next_BxS1 = (t_1xS1 == L_B[:, None]) & (n_B > n_pos_B)[:, None]
  return starts_from_lengths(lengths_BxP, S) | next_BxS1, L_B
