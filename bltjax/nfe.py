"""NFE accounting and the paper's memory-bandwidth estimate (fast_blt.md §7-§8).

BW_GB = b · (N_dec · P_dec + N_enc · (P_enc + P_glob)) / 1e9 with b = 2 bytes per parameter.
Parameter counts come from the actual tree and exclude the hash tables and the entropy model.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax


@dataclasses.dataclass(frozen=True)
class ParamCounts:
  enc: int  # local encoder without hash tables
  glob: int  # global transformer (incl. token_embedding_projection)
  dec: int  # local decoder incl. head and patch projection


def _count(tree: Any) -> int:
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def param_counts(params: Any) -> ParamCounts:
  """Counts from a params (or abstract params) tree."""
  enc = {k: v for k, v in params["local_encoder"].items() if k != "hash_embeddings"}
  return ParamCounts(enc=_count(enc), glob=_count(params["global_transformer"]),
                     dec=_count(params["local_decoder"]))


def bandwidth_gb(n_dec: int, n_enc: int, counts: ParamCounts, bytes_per_param: int = 2) -> float:
  """Estimated weight traffic of one example in GB (paper Eq. 8)."""
  return bytes_per_param * (n_dec * counts.dec + n_enc * (counts.enc + counts.glob)) / 1e9
