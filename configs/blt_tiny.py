"""Tiny BLT for CPU: trains in minutes on 2 cores (`make demo`, tests).

Entropy patching needs the export of an entropy run (configs/entropy_tiny.py), e.g.
  python train.py --config configs/entropy_tiny.py --workdir runs/ent
  python train.py --config configs/blt_tiny.py --workdir runs/blt \
    --config.train.entropy_checkpoint runs/ent/export
or run without one: --config.model.patcher.mode static.
"""

from bltjax.training.train_config import base_config, entropy_stack, global_stack, stack


def get_config():
  c = base_config()
  c.model.encoder = stack(64, 1, 2, ffn_dim=192)
  c.model.global_model = global_stack(128, 2, 4, ffn_dim=384)
  c.model.decoder = stack(64, 2, 2, ffn_dim=192)
  c.model.entropy = entropy_stack(64, 2, 4, ffn_dim=192)
  c.model.hash.update(group_sizes=(3, 4, 5, 6, 7, 8), vocab=8191, nb_functions=1)
  c.model.patcher.update(mode="entropy", threshold=1.335442066192627, max_patch_length=16)
  c.model.cross_attn_k = 2
  c.train.task = "blt"
  c.train.steps = 400
  c.train.batch_size = 16
  c.train.seq_len = 256
  c.train.lr = 6e-3
  c.train.warmup_steps = 50
  c.train.min_lr_ratio = 0.1
  c.train.log_every = 25
  c.train.eval_every = 200
  c.train.eval_windows = 16
  c.train.ckpt_every = 200
  c.data.source = "fixture"
  return c
