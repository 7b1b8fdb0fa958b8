"""Tiny random BLT configs and params with non-trivial entropy patches (no torch needed)."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from bltjax.config import BLTConfig, HashConfig, PatcherConfig, TransformerConfig
from bltjax.modeling import model


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
  p = model.init_params(cfg, jax.random.key(seed))
  p["entropy_model"]["output"]["kernel"] = p["entropy_model"]["output"]["kernel"] * sharpen
  p["local_decoder"]["output"]["kernel"] = p["local_decoder"]["output"]["kernel"] * logit_scale
  return p


def median_threshold(params, cfg: BLTConfig, n: int = 200, seed: int = 1) -> float:
  rng = np.random.default_rng(seed)
  ids = jnp.asarray(np.concatenate([[1], rng.integers(4, 260, n - 1)])[None], jnp.int32)
  return float(jnp.median(model.entropies(params, cfg, ids)[0, 1:]))


# Prompts shared by the decoding tests: short, one byte, repetitive text crossing the window,
# and arbitrary bytes.
PROMPTS = [b"Hello world", b"a", b"The quick brown fox jumps over the lazy dog. " * 3,
           bytes(range(200, 256)) + b"\x00\xff"]


def blt_setup(**kw):
  """A tiny BLT with (for entropy patching) the median-entropy threshold: (cfg, params)."""
  cfg = tiny_config(**kw)
  params = tiny_params(cfg)
  if cfg.patcher.mode == "entropy":
    th = median_threshold(params, cfg)
    cfg = cfg.replace(patcher=dataclasses.replace(cfg.patcher, threshold=th))
  return cfg, params


BLOCK_SIZE = 4


@functools.cache
def bltd_setup(block_prefix_window: int = 16, block_input: str = "tok_embeddings"):
  """A tiny BLT-D (Z = 4, window 16): (cfg, params)."""
  from bltjax.config import DiffusionConfig

  cfg = tiny_config(window=16).replace(diffusion=DiffusionConfig(
    block_size=BLOCK_SIZE, block_prefix_window=block_prefix_window, block_input=block_input))
  params = tiny_params(cfg)
  th = median_threshold(params, cfg)
  return cfg.replace(patcher=dataclasses.replace(cfg.patcher, threshold=th)), params
