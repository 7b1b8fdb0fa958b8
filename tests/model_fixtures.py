"""Tiny random BLT configs and params with non-trivial entropy patches (no torch needed)."""

import jax
import jax.numpy as jnp
import numpy as np

from bltjax import model as M
from bltjax.config import BLTConfig, HashConfig, PatcherConfig, TransformerConfig


def tiny_config(k: int = 2, window: int = 512, max_patch_length=None, mode="entropy",
                threshold=1.0, **kw) -> BLTConfig:
  enc = TransformerConfig(dim=32, n_layers=1, n_heads=2, ffn_dim=64, window=window,
                          name="encoder")
  glb = TransformerConfig(dim=48, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=96, window=None,
                          name="global_model")
  dec = TransformerConfig(dim=32, n_layers=2, n_heads=4, ffn_dim=64, window=window,
                          name="decoder")
  ent = TransformerConfig(dim=32, n_layers=1, n_heads=2, ffn_dim=64, window=window,
                          rope_theta=10000.0, name="entropy")
  return BLTConfig(encoder=enc, global_=glb, decoder=dec, entropy=ent,
                   hash=HashConfig(group_sizes=(3, 4, 5), vocab=257),
                   patcher=PatcherConfig(mode=mode, threshold=threshold,
                                         max_patch_length=max_patch_length),
                   cross_attn_k=k, **kw)


def tiny_params(cfg: BLTConfig, seed: int = 0, sharpen: float = 12.0, logit_scale: float = 4.0):
  """Random params; the entropy head is sharpened so entropies straddle the threshold and the
  decoder head is scaled so greedy decoding is not a constant byte."""
  p = M.init_params(cfg, jax.random.key(seed))
  p["entropy_model"]["output"]["kernel"] = p["entropy_model"]["output"]["kernel"] * sharpen
  p["local_decoder"]["output"]["kernel"] = p["local_decoder"]["output"]["kernel"] * logit_scale
  return p


def median_threshold(params, cfg: BLTConfig, n: int = 200, seed: int = 1) -> float:
  rng = np.random.default_rng(seed)
  ids = jnp.asarray(np.concatenate([[1], rng.integers(4, 260, n - 1)])[None], jnp.int32)
  return float(jnp.median(M.entropies(params, cfg, ids)[0, 1:]))
