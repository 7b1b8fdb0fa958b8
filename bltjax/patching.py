"""Patch boundaries: entropy / space / static / byte patchers and derived patch ids.

Internal representation (blt.md §3.2): a boolean `start_BxS1` over S + 1 slots (slot S is the
"next token" slot), from which lengths, patch ids and decoder patch ids are derived.
"""

import jax.numpy as jnp


def patch_ids_from_starts(start_BxS1: jnp.ndarray) -> jnp.ndarray:
  """patch_ids[t] = (number of starts <= t) - 1, for t in 0..S-1."""
  return (jnp.cumsum(start_BxS1.astype(jnp.int32), axis=-1) - 1)[:, :-1]


def decoder_patch_ids_from_starts(start_BxS1: jnp.ndarray) -> jnp.ndarray:
  """dec(t) = patch_ids[t + 1] - 1: the latent byte t reads (the patch before byte t+1's)."""
  return jnp.maximum(jnp.cumsum(start_BxS1.astype(jnp.int32), axis=-1)[:, 1:] - 2, 0)


def num_patches(start_BxS1: jnp.ndarray) -> jnp.ndarray:
  return jnp.sum(start_BxS1.astype(jnp.int32), axis=-1)
