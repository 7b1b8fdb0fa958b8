"""Everything random in decoding, in one place: the sampling distribution (temperature, top-k,
top-p), per-row keys, draws, and speculative sampling's accept / resample (arXiv 2211.17192, as
BLT-S and BLT-DV use it, arXiv 2605.08044 §5).

Keys: a row's draw depends only on its own key (seed, id), the position and a salt, never on its
batch: AR's byte at position n uses `fold_in(key, n)`; BLT-S's drafts, coins and corrections
fold in a salt on top, so they never reuse AR's draw.

Arrays, not flags: temperature, top-k and top-p are per-row arrays, so one compilation serves
every setting; rows with temperature 0 take the argmax. Whether any row samples at all is the
loop's static `sampled` (`runloop.LoopArgs`): greedy programs carry no probability tensors.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DRAW, COIN, CORRECT = 1, 2, 3  # salts of BLT-S's draft draws, acceptance coins, corrections


def warp(logits_BxV, temp_B, top_k_B, top_p_B):
  """Logits of the sampling distribution: temperature, then top-k, then top-p (the smallest
  prefix whose mass reaches top_p, always the top id); excluded ids get -inf. Rows with
  temperature 0 are left as they are (greedy rows take the argmax)."""
  v = logits_BxV.shape[-1]
  lg = logits_BxV.astype(jnp.float32) / jnp.maximum(temp_B, 1e-6)[:, None]
  srt = jnp.sort(lg, axis=-1)[:, ::-1]
  k = jnp.where(top_k_B > 0, jnp.minimum(top_k_B, v), v)
  kth = jnp.take_along_axis(srt, (k - 1)[:, None], axis=-1)
  srt = jnp.where(srt < kth, -jnp.inf, srt)
  probs = jax.nn.softmax(srt, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs
  n_keep = jnp.maximum(jnp.sum(before < top_p_B[:, None], axis=-1), 1)
  cut = jnp.take_along_axis(srt, (n_keep - 1)[:, None], axis=-1)
  return jnp.where((lg < cut) | (lg < kth), -jnp.inf, lg)


def probs(logits_BxV, temp_B, top_k_B, top_p_B):
  """The distribution `sample` draws from: warped softmax, or one-hot argmax at temperature 0."""
  greedy = jax.nn.one_hot(jnp.argmax(logits_BxV, axis=-1), logits_BxV.shape[-1])
  return jnp.where((temp_B > 0)[:, None],
                   jax.nn.softmax(warp(logits_BxV, temp_B, top_k_B, top_p_B), axis=-1), greedy)


def window_probs(logits_BxQxV, ctx):
  """`probs` at every position of a window, each row with its own sampling parameters."""
  b, q, v = logits_BxQxV.shape
  rep = lambda x: jnp.repeat(x, q)  # noqa: E731
  return probs(logits_BxQxV.reshape(b * q, v), rep(ctx.temperature), rep(ctx.top_k),
               rep(ctx.top_p)).reshape(b, q, v)


def sample(logits_BxV, keys_B, temp_B, top_k_B, top_p_B):
  """Per-row greedy or sampling; parameters are arrays, so one compilation serves all settings.

  A row's draw depends only on its own key, parameters and logits (never on the batch).
  """
  greedy = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  drawn = jax.vmap(jax.random.categorical)(keys_B, warp(logits_BxV, temp_B, top_k_B, top_p_B))
  return jnp.where(temp_B > 0, drawn.astype(jnp.int32), greedy)


def keys_at(keys_B, pos_B, salt=None):
  """Each row's key for a position: AR's when `salt` is None, else salted (an int, or one per
  row)."""
  k = jax.vmap(jax.random.fold_in)(keys_B, pos_B)
  if salt is None:
    return k
  return jax.vmap(jax.random.fold_in)(k, jnp.broadcast_to(jnp.asarray(salt, jnp.int32),
                                                          pos_B.shape))


def next_byte(logits_BxV, pos_B, ctx):
  """The byte at position `pos` as AR decoding takes it: argmax, or AR's draw for that
  position under the row's sampling parameters."""
  return sample(logits_BxV, keys_at(ctx.keys, pos_B), ctx.temperature, ctx.top_k, ctx.top_p)


def first_byte(logits_BxV, pos_B, carry_B, carry_tok_B, ctx):
  """x0 of a speculation cycle, the exact byte at `pos`: argmax when greedy; sampled, the
  correction byte the last verification drew (`carry`), else AR's draw from the verified logits
  (the bonus byte when every draft was accepted)."""
  if not ctx.sampled:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  return jnp.where(carry_B, carry_tok_B, next_byte(logits_BxV, pos_B, ctx))


def draft_byte(logits_BxV, pos_B, ctx):
  """(a draft byte for `pos`, the distribution q it came from or None when greedy, its max
  probability)."""
  if not ctx.sampled:
    return (jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32), None,
            jnp.max(jax.nn.softmax(logits_BxV, axis=-1), axis=-1))
  q = probs(logits_BxV, ctx.temperature, ctx.top_k, ctx.top_p)
  d = jax.vmap(jax.random.categorical)(keys_at(ctx.keys, pos_B, DRAW), jnp.log(q))
  return d.astype(jnp.int32), q, jnp.max(q, axis=-1)


def accept(verifier_logits_BxKxV, drafts_BxK, q_BxKxV, length_B, pos_B, ctx):
  """(accepted count a [B], per-draft acceptance [B, k], correction byte [B] or None) for drafts
  at positions pos+1 .. pos+k, the verifier's logits at pos .. pos+k-1.

  Greedy (q None): the longest prefix with d_j = argmax. Sampled: speculative sampling
  (arXiv 2211.17192): d_j is kept with probability min(1, p(d_j)/q(d_j)); the first rejected
  position is redrawn from max(0, p - q) normalised, so every committed byte follows the
  verifier's (warped) distribution p exactly.
  """
  k = drafts_BxK.shape[1]
  in_draft = jnp.arange(k)[None] < length_B[:, None]
  if q_BxKxV is None:
    y = jnp.argmax(verifier_logits_BxKxV, axis=-1).astype(jnp.int32)  # y[:, j] predicts d_j
    ok = (drafts_BxK == y) & in_draft
    return jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1), ok, None
  p = window_probs(verifier_logits_BxKxV, ctx)
  take = lambda x: jnp.take_along_axis(x, drafts_BxK[..., None], axis=-1)[..., 0]  # noqa: E731
  coin = jnp.stack([jax.vmap(jax.random.uniform)(keys_at(ctx.keys, pos_B + 1 + j, COIN))
                    for j in range(k)], axis=1)
  ok = (coin * take(q_BxKxV) < take(p)) & in_draft
  acc = jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1)
  at = lambda x: jnp.take_along_axis(  # noqa: E731
    x, jnp.minimum(acc, k - 1)[:, None, None], axis=1)[:, 0]
  resid = jnp.maximum(at(p) - at(q_BxKxV), 0.0)
  resid = jnp.where(jnp.sum(resid, axis=-1, keepdims=True) > 0, resid, at(p))
  fix = jax.vmap(jax.random.categorical)(keys_at(ctx.keys, pos_B + 1 + acc, CORRECT),
                                         jnp.log(resid))
  return acc, ok, fix.astype(jnp.int32)


__all__ = ["DRAW", "COIN", "CORRECT", "warp", "probs", "window_probs", "sample", "keys_at",
           "next_byte", "first_byte", "draft_byte", "accept"]
