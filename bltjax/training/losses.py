"""Training losses and the loss-function contract shared by train.py, eval and BLT-D.

Contract::

  loss_fn(params, cfg, batch, rng) -> (loss, metrics)

- `params`: the full parameter tree (`local_encoder`, `global_transformer`, `local_decoder` and,
  where the task needs it, `entropy_model`); gradients are taken w.r.t. the trainable part.
- `cfg`: the static `BLTConfig`.
- `batch`: ids int32 [B, S] (pad 0), valid bool [B, S] (a prefix of each row), doc_ids int32
  [B, S] (document piece per row, 0 on padding), start bool [B, S + 1] (patch starts, BLT only),
  and optionally score bool [B, S]: only targets at positions where it is True count (eval).
- `rng`: a key for stochastic losses (BLT-D's noise level); deterministic losses ignore it.
- Returns the mean next-byte cross-entropy (nats) over scored targets and a dict of fp32
  scalars. Names starting with `n_` or ending with `_sum` are counts / sums (they add across
  microbatches and devices); `weight` is the number of scored targets (the loss's denominator);
  every other entry is a per-target mean. BLT losses also accept a static keyword
  `max_patches`.

Targets: position t predicts ids[t + 1]. A target counts iff it is a real id (valid), is not BOS
(the first id of the next packed document is not predictable from the previous one), and, for BLT,
lies before the row's patch budget cut (docs/choices.md). Bits per byte (arXiv 2412.09871 §4.6,
Eq. 18) sums over byte targets only (ids 4..259); EOS targets are reported apart (`nll_eos_sum`,
`n_eos`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from bltjax.config import BOS_ID, EOS_ID, OFFSET, BLTConfig
from bltjax.modeling import model

Batch = dict[str, jax.Array]
LossFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def lengths_of(valid_BxS: jax.Array) -> jax.Array:
  return jnp.sum(valid_BxS.astype(jnp.int32), axis=-1)


def train_patch_starts(params: Any, cfg: BLTConfig, batch: Batch) -> jax.Array:
  """Patch starts for training: the config's patcher plus a forced start after every EOS.

  Entropy mode runs the (frozen) entropy model `params["entropy_model"]` in fp32 on the batch,
  with document-reset attention; no gradient flows through the result. Forcing a start right
  after each EOS keeps every patch inside one document (docs/choices.md), so packing never lets a
  patch latent mix two documents.
  """
  ids, valid = batch["ids"], batch["valid"]
  lengths = lengths_of(valid)
  start_BxS1 = model.patch(params, cfg, ids, lengths, batch.get("doc_ids"))
  eos_BxS = (ids == EOS_ID) & valid
  after_eos_BxS1 = jnp.pad(eos_BxS, ((0, 0), (1, 0)))
  t_BxS1 = jnp.arange(ids.shape[1] + 1)[None, :]
  start_BxS1 = (start_BxS1 | after_eos_BxS1) & (t_BxS1 <= lengths[:, None])
  return jax.lax.stop_gradient(start_BxS1)


def truncate_to_patches(start_BxS1: jax.Array, lengths_B: jax.Array, max_patches: int
                        ) -> tuple[jax.Array, jax.Array]:
  """Cuts each row at the start of patch `max_patches` (the first one over the budget).

  Returns:
    (starts with every slot past the cut cleared, new lengths). Ids past the new length are
    neither attended to nor scored. The cut slot itself stays a start: it is the next-token slot.
  """
  count_BxS1 = jnp.cumsum(start_BxS1.astype(jnp.int32), axis=-1)
  over_BxS1 = start_BxS1 & (count_BxS1 > max_patches)
  s1 = start_BxS1.shape[1]
  cut_B = jnp.where(jnp.any(over_BxS1, axis=-1), jnp.argmax(over_BxS1, axis=-1), s1)
  new_len_B = jnp.minimum(lengths_B, cut_B)
  keep_BxS1 = jnp.arange(s1)[None, :] <= new_len_B[:, None]
  return start_BxS1 & keep_BxS1, new_len_B


def next_byte_metrics(logits_BxSxV: jax.Array, ids_BxS: jax.Array, valid_BxS: jax.Array,
                      score_BxS: jax.Array | None = None, extra_mask_BxS: jax.Array | None = None
                      ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean next-byte CE over scored targets, and the bpb sums (see the module docstring)."""
  logits = logits_BxSxV[:, :-1].astype(jnp.float32)  # fp32 softmax whatever the compute dtype
  tgt = ids_BxS[:, 1:]
  mask = valid_BxS[:, 1:] & (tgt != BOS_ID)
  if score_BxS is not None:
    mask &= score_BxS[:, 1:]
  if extra_mask_BxS is not None:
    mask &= extra_mask_BxS[:, 1:]
  logz = jax.nn.logsumexp(logits, axis=-1)
  picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
  nll = jnp.where(mask, logz - picked, 0.0)
  is_byte = mask & (tgt >= OFFSET)
  is_eos = mask & (tgt == EOS_ID)
  weight = jnp.sum(mask).astype(jnp.float32)
  loss = jnp.sum(nll) / jnp.maximum(weight, 1.0)
  correct = (jnp.argmax(logits, axis=-1) == tgt) & mask
  metrics = {
    "weight": weight,
    "nll_bytes_sum": jnp.sum(jnp.where(is_byte, nll, 0.0)),
    "n_bytes": jnp.sum(is_byte).astype(jnp.float32),
    "nll_eos_sum": jnp.sum(jnp.where(is_eos, nll, 0.0)),
    "n_eos": jnp.sum(is_eos).astype(jnp.float32),
    "accuracy": jnp.sum(correct) / jnp.maximum(weight, 1.0),
  }
  return loss, metrics


def entropy_loss(params: Any, cfg: BLTConfig, batch: Batch, rng: jax.Array | None = None
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Next-byte LM loss of the entropy model (`params["entropy_model"]`)."""
  del rng
  ids, valid = batch["ids"], batch["valid"]
  logits = model.entropy_logits(params, cfg, ids, lengths_of(valid), batch.get("doc_ids"))
  loss, metrics = next_byte_metrics(logits, ids, valid, batch.get("score"))
  metrics["n_tokens"] = jnp.sum(valid).astype(jnp.float32)
  return loss, metrics


def blt_loss(params: Any, cfg: BLTConfig, batch: Batch, rng: jax.Array | None = None, *,
             max_patches: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Next-byte LM loss of BLT given patch starts `batch["start"]` and a static patch budget."""
  del rng
  ids, valid = batch["ids"], batch["valid"]
  s = ids.shape[1]
  p = max_patches or s + 1
  lengths = lengths_of(valid)
  start, new_len = truncate_to_patches(batch["start"], lengths, p)
  logits = model.forward(params, cfg, ids, start, new_len, p, batch.get("doc_ids"))
  kept = jnp.arange(s)[None, :] < new_len[:, None]
  loss, metrics = next_byte_metrics(logits, ids, valid, batch.get("score"), kept)
  metrics["n_tokens"] = jnp.sum(valid).astype(jnp.float32)
  metrics["n_truncated"] = jnp.sum(lengths - new_len).astype(jnp.float32)
  # Real patches per row: starts strictly before the row end (the next slot is not a patch).
  t = jnp.arange(s + 1)[None, :]
  metrics["n_patches"] = jnp.sum(start & (t < new_len[:, None])).astype(jnp.float32)
  return loss, metrics
