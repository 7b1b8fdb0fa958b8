"""Tiny BLT-D (block diffusion, fast_blt.md) for CPU: configs/blt_tiny.py + diffusion blocks of 8.

The loss comes from `bltjax.diffusion.bltd_loss` (selected because diffusion.block_size > 0).
"""

from bltjax.train_config import base_config, entropy_stack, global_stack, stack


def get_config():
  c = base_config()
  c.model.encoder = stack(64, 1, 2, ffn_dim=192)
  c.model.global_model = global_stack(128, 2, 4, ffn_dim=384)
  c.model.decoder = stack(64, 2, 2, ffn_dim=192)
  c.model.entropy = entropy_stack(64, 2, 4, ffn_dim=192)
  c.model.hash.update(group_sizes=(3, 4, 5, 6, 7, 8), vocab=8191, nb_functions=1)
  c.model.patcher.update(mode="entropy", threshold=1.335442066192627, max_patch_length=8)
  c.model.diffusion.update(block_size=8)
  c.model.cross_attn_k = 2
  c.train.task = "blt"
  c.train.steps = 400
  c.train.batch_size = 16
  c.train.seq_len = 128
  c.train.lr = 3e-3
  c.train.warmup_steps = 50
  c.train.min_lr_ratio = 0.1
  c.train.log_every = 25
  c.train.eval_every = 200
  c.train.eval_windows = 16
  c.train.ckpt_every = 200
  c.data.source = "fixture"
  return c
