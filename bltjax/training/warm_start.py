"""Start a BLT or BLT-D run from a trained BLT's weights (`init_from_blt`; docs/choices.md #17).

`train.init_from_blt = DIR` (a bltjax checkpoint: a BLT run's export, or Meta/HF weights converted
with `python -m bltjax.convert`) replaces the fresh parameters of a new run before step 0; a run
that already has checkpoints in its workdir resumes from them instead. Every trainable tensor is
copied; the one shape allowed to differ is the encoder's byte table, which BLT-D extends by the
[MASK] row (id 260): rows 0..259 come from DIR and the MASK row keeps its fresh initialisation
(the byte rows' distribution). A BLT-D checkpoint loaded into a BLT drops that row.

The architecture must match exactly (stacks, hash embeddings, cross-attention): a mismatch raises
`ConfigError` naming the config key or tensor with both values. Patcher, diffusion, dtypes and
remat may differ. An entropy patcher still reads `train.entropy_checkpoint`, which may be the same
directory when it holds the entropy model (converted Meta/HF weights do).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax

from bltjax.config import GLOBAL_KEY, VOCAB_SIZE, BLTConfig, ConfigError

KEY = "train.init_from_blt"
_TABLE = ("local_encoder", "tok_embeddings", "embedding")
# BLTConfig fields that fix what the weights mean without always changing their shapes.
_SAME = ("encoder", "global_", "decoder", "hash", "cross_attn_k", "cross_attn_nheads",
         "cross_attn_residual", "vocab_size")


def check_compatible(src: BLTConfig, dst: BLTConfig, path: str) -> None:
  """Raises ConfigError naming the first architecture field in which `src` and `dst` differ."""
  for f in _SAME:
    a, b = getattr(src, f), getattr(dst, f)
    if dataclasses.is_dataclass(a) and hasattr(a, "name"):
      a, b = dataclasses.replace(a, name=""), dataclasses.replace(b, name="")
    if a != b:
      key = GLOBAL_KEY if f == "global_" else f
      raise ConfigError(f"{KEY}: model.{key} of {path} is {a}, this run's is {b}")


def _path_str(path: tuple[Any, ...]) -> str:
  return "/".join(str(getattr(k, "key", k)) for k in path)


def load(path: str, cfg: BLTConfig, fresh: dict[str, Any], keys: Sequence[str],
         fallback_sharding: jax.sharding.Sharding) -> tuple[dict[str, Any], dict[str, int]]:
  """`fresh` (this run's initialised trainable params, sharded) with DIR's tensors copied in.

  Tensors are restored straight into `fresh`'s shardings when their shapes agree (a 7B model
  never gathers on one host); anything else in DIR (the byte table of another width, an entropy
  model) is restored with `fallback_sharding`. Returns (params, counts) with counts of copied
  tensors and of extended/trimmed byte tables.
  """
  from pathlib import Path

  from bltjax import weights

  if not Path(path).is_dir():
    raise ConfigError(f"{KEY}: {path} is not a directory")
  src_cfg = weights.load_config(path)
  check_compatible(src_cfg, cfg, path)
  meta = weights.tree_metadata(path)
  missing = [k for k in keys if k not in meta]
  if missing:
    raise ConfigError(f"{KEY}: {path} holds no {', '.join(missing)} parameters (has "
                      f"{sorted(meta)})")
  flat_fresh = dict(jax.tree_util.tree_flatten_with_path(fresh)[0])

  def shard(p, m):
    f = flat_fresh.get(p)
    same = f is not None and tuple(f.shape) == tuple(m.shape)
    return f.sharding if same else fallback_sharding

  shardings = jax.tree_util.tree_map_with_path(shard, meta)
  _, loaded = weights.load_checkpoint(path, dtype=cfg.param_dtype, shardings=shardings)
  flat_src = dict(jax.tree_util.tree_flatten_with_path({k: loaded[k] for k in keys})[0])
  counts = {"copied": 0, "byte_table_resized": 0}

  def take(p, f):
    name = _path_str(p)
    if p not in flat_src:
      raise ConfigError(f"{KEY}: {path} has no tensor {name} (shape {tuple(f.shape)})")
    s = flat_src[p]
    if tuple(s.shape) == tuple(f.shape):
      counts["copied"] += 1
      return s
    is_table = tuple(str(getattr(k, "key", k)) for k in p) == _TABLE
    rows_ok = s.shape[1:] == f.shape[1:] and {s.shape[0], f.shape[0]} <= {VOCAB_SIZE,
                                                                            VOCAB_SIZE + 1}
    if not (is_table and rows_ok):
      raise ConfigError(f"{KEY}: tensor {name} has shape {tuple(s.shape)} in {path}, this run "
                        f"needs {tuple(f.shape)}")
    counts["byte_table_resized"] += 1
    n = min(s.shape[0], f.shape[0])
    # The MASK row (if this run has one) keeps its fresh value; a source MASK row is dropped.
    return jax.jit(lambda ff, ss: ff.at[:n].set(ss[:n].astype(ff.dtype)),
                   out_shardings=f.sharding)(f, s)

  out = jax.tree_util.tree_map_with_path(take, fresh)
  extra = sorted(set(map(_path_str, flat_src)) - set(map(_path_str, flat_fresh)))
  if extra:
    raise ConfigError(f"{KEY}: {path} has tensors this run does not: {extra[:5]}")
  return out, counts


__all__ = ["check_compatible", "load", "KEY"]
