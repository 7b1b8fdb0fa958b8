"""BLT-1B, released geometry (docs/architecture.md, "Released geometries"): encoder 1 x 1024
(16 heads), global 25 x 2048 (16 heads), decoder 9 x 1024, k = 2 (no global input projection),
hash n-grams 3..8 with 500002 rows, entropy patching at the release threshold with the 100M
entropy model.

~1.46 B non-hash + 3.07 B hash-table parameters. Recipe (arXiv 2412.09871 §4.8): AdamW 4e-4,
warm-up 2000, cosine to 0, clip 1.0, 8k-byte context. Needs an accelerator pod: bf16 compute,
fsdp sharding; point train.entropy_checkpoint at an entropy_100m run's export.

Global batch 256 rows of 8192 bytes in microbatches of 1 row per chip (train.rows_per_chip), so
grad_accum is derived from the slice: 16 on v5e-16, 32 on v5e-8 (16 GiB HBM per chip), remat
"full", Adam's moments in host memory between steps (train.offload_optimizer): on v5e-8 the step
then fits, where with the moments on the chips it needs 17.8 GiB per chip (TPU compiler's
figures, einsum attention, docs/accelerators.md "Training step"). On slices where the moments
fit (v5e-16 and larger) --config.train.offload_optimizer=false saves the copies.
"""

from bltjax.training.train_config import base_config, entropy_stack, global_stack, stack


def get_config():
  c = base_config()
  c.model.encoder = stack(1024, 1, 16)
  c.model.global_model = global_stack(2048, 25, 16)
  c.model.decoder = stack(1024, 9, 16)
  c.model.entropy = entropy_stack(768, 14, 12)
  c.model.cross_attn_k = 2
  c.model.dtype = "bfloat16"
  c.model.remat = "full"  # recompute each block in the backward pass: least activation memory
  c.train.task = "blt"
  c.train.steps = 100_000
  c.train.batch_size = 256
  c.train.rows_per_chip = 1  # grad_accum = 256 / (1 x chips): 16 on v5e-16, 32 on v5e-8
  c.train.offload_optimizer = True  # the moments in host memory: what lets v5e-8 fit
  c.train.seq_len = 8192
  c.train.min_expected_patch = 2.0
  c.train.lr = 4e-4
  c.train.warmup_steps = 2000
  c.train.log_every = 50
  c.train.eval_every = 2000
  c.train.eval_windows = 64
  c.train.ckpt_every = 1000
  c.data.source = "default"
  return c
