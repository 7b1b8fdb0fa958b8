"""The released entropy model geometry (Meta's `entropy_model` for BLT, arXiv 2412.09871 §3.3):
14 layers, dim 768, 12 heads, FFN 2048, window 512, RoPE θ 10000, ~99.5 M parameters; official
training recipe (lr 4e-4, warm-up 500, min lr ratio 0.1, clip 10, 100k steps of 8192 bytes). The
model section is BLT-1B's (configs/blt_1b.py), the model this entropy model patches for; task
"entropy" trains and exports only `entropy_model`.
"""

from bltjax.training.train_config import base_config, sibling_config


def get_config():
  c = base_config()
  c.model = sibling_config(__file__, "blt_1b").model  # the BLT this entropy model patches for
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
