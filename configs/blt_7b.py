"""BLT-7B, released geometry (docs/architecture.md, "Released geometries"): encoder 1 x 1280
(20 heads), global 32 x 4096 (32 heads), decoder 6 x 1280, k = 4, so the global input projection
5120 -> 4096 exists; hash n-grams 3..8 with 500002 rows; entropy patching with the 100M entropy
model.

~6.7 B non-hash + 3.84 B hash-table parameters: shard with fsdp (and tensor) over a pod.
"""

from bltjax.training.train_config import base_config, entropy_stack, global_stack, stack


def get_config():
  c = base_config()
  c.model.encoder = stack(1280, 1, 20)
  c.model.global_model = global_stack(4096, 32, 32)
  c.model.decoder = stack(1280, 6, 20)
  c.model.entropy = entropy_stack(768, 14, 12)
  c.model.cross_attn_k = 4
  c.model.dtype = "bfloat16"
  c.model.remat = "full"
  c.train.task = "blt"
  c.train.steps = 100_000
  c.train.batch_size = 512
  c.train.seq_len = 8192
  c.train.lr = 4e-4
  c.train.warmup_steps = 2000
  c.train.log_every = 50
  c.train.eval_every = 2000
  c.train.eval_windows = 64
  c.train.ckpt_every = 500
  c.data.source = "default"
  return c
