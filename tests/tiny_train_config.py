"""Smallest useful training config for tests (also loaded by train.py in subprocess tests).

`get_config("entropy")` / `get_config("blt")`: 1-layer stacks of width 32, 2 hash tables,
static patches of 4 (no entropy checkpoint needed), 32-id rows, batch 8, fixture data.
"""

import numpy as np

from bltjax.training.train_config import base_config, entropy_stack, global_stack, stack


def get_config(task: str = "blt"):
  c = base_config()
  c.model.encoder = stack(32, 1, 2, ffn_dim=64)
  c.model.global_model = global_stack(64, 1, 2, ffn_dim=128)
  c.model.decoder = stack(32, 1, 2, ffn_dim=64)
  c.model.entropy = entropy_stack(32, 1, 2, ffn_dim=64)
  c.model.hash.update(group_sizes=(3, 4), vocab=257, nb_functions=1)
  c.model.patcher.update(mode="static", patch_size=4.0)
  c.train.task = task or "blt"
  c.train.steps = 12
  c.train.batch_size = 8
  c.train.seq_len = 32
  c.train.lr = 3e-3
  c.train.warmup_steps = 2
  c.train.log_every = 1
  c.train.eval_windows = 8
  c.train.ckpt_every = 4
  c.train.keep = 2
  c.train.progress = False
  c.train.tensorboard = False
  c.data.source = "fixture"
  return c


def random_params(cfg, keys, seed: int = 0):
  """Host (numpy) parameters of the model's shapes: N(0, 0.05²), norm scales 1. No compile,
  unlike `model.init_params` (~10 s of XLA on a slow CPU), for tests that need *some* weights."""
  import jax

  from bltjax.modeling import model

  shapes = model.abstract_params(cfg)
  rng = np.random.default_rng(seed)

  def one(path, x):
    if getattr(path[-1], "key", None) == "scale":
      return np.ones(x.shape, x.dtype)
    return (0.05 * rng.standard_normal(x.shape)).astype(x.dtype)

  return jax.tree_util.tree_map_with_path(one, {k: shapes[k] for k in keys})
