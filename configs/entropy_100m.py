"""The released entropy model geometry (blt.md §3.3): 14 layers, dim 768, 12 heads, FFN 2048,
window 512, RoPE θ 10000, ~99.5 M parameters; official training recipe (lr 4e-4, warm-up 500,
min lr ratio 0.1, clip 10, 100k steps of 8192 bytes). The BLT part is BLT-1B's, the model this
entropy model patches for; task "entropy" trains and exports only `entropy_model`.
"""

from bltjax.train_config import base_config, entropy_stack, global_stack, stack


def get_config():
  c = base_config()
  c.model.encoder = stack(1024, 1, 16)
  c.model.global_model = global_stack(2048, 25, 16)
  c.model.decoder = stack(1024, 9, 16)
  c.model.entropy = entropy_stack(768, 14, 12)
  c.model.cross_attn_k = 2
  c.model.dtype = "bfloat16"  # compute; params and optimiser state stay float32
  c.model.remat = "dots"
  c.train.task = "entropy"
  c.train.steps = 100_000
  c.train.batch_size = 64
  c.train.seq_len = 8192
  c.train.lr = 4e-4
  c.train.warmup_steps = 500
  c.train.min_lr_ratio = 0.1
  c.train.clip_norm = 10.0
  c.train.log_every = 50
  c.train.eval_every = 2000
  c.train.eval_windows = 64
  c.train.ckpt_every = 1000
  c.data.source = "default"
  return c
