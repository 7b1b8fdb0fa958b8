"""Tiny entropy model for CPU: the patcher of configs/blt_tiny.py (whose model section it keeps:
the BLT part describes the model this entropy model will patch for; task "entropy" trains and
exports `entropy_model` alone)."""

from bltjax.training.train_config import sibling_config


def get_config():
  c = sibling_config(__file__, "blt_tiny")
  c.train.task = "entropy"
  c.train.steps = 300
  c.train.eval_every = 0
  c.train.ckpt_every = 100
  return c
