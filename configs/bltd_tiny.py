"""Tiny BLT-D (block diffusion, arXiv 2605.08044 §3) for CPU: configs/blt_tiny.py plus diffusion
blocks of 8, at most 8 bytes per patch, 128-byte rows and a lower learning rate.

The loss comes from `bltjax.training.diffusion.bltd_loss` (selected because
diffusion.block_size > 0).
"""

from bltjax.training.train_config import sibling_config


def get_config():
  c = sibling_config(__file__, "blt_tiny")
  c.model.patcher.max_patch_length = 8
  c.model.diffusion.block_size = 8
  c.train.seq_len = 128
  c.train.lr = 3e-3
  return c
